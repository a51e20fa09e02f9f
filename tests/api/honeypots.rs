//! Tests for honeypots.
