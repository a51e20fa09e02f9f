//! Tests for roles.
