"""nmcfx.imaging"""
