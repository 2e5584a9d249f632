"""Data files shipped with cenote (the int8 calibration text)."""
