"""nmcfx.studies"""
