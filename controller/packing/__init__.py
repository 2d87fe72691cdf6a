"""Dose packing: orders become jobs, jobs run on packers, pouches become movements."""
