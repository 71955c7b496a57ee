//! Data loading for monarch.
