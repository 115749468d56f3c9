"""nmcfx.solver"""
