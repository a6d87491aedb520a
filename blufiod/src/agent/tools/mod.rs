//! Built-in tools (in progress).
