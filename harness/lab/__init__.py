"""The lab: the inventory of devices (devices/*.yaml), platform profiles, health and leases."""
