//! The systemd runtime: one unit per component, written to roost's unit folder and driven and
//! observed over D-Bus (zbus). It never shells out to `systemctl` and never polls.

pub mod dbus;
pub mod names;
pub mod notify;
pub mod state;
pub mod unit;
