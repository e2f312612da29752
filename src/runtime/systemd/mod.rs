//! Placeholder: the systemd runtime (D-Bus via zbus) is being written.
