//! Neural-network modules of monarch.
