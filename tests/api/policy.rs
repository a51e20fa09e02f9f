//! Tests for policy.
