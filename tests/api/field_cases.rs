//! Tests for field_cases.
