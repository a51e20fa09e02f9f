//! Tests for errors.
