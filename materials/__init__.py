"""nmcfx.materials"""
