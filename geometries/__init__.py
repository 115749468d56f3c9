"""nmcfx.geometries"""
