"""The demo: a simulated plant, one day of dose orders and one day on the wards."""
