//! Tests for logs.
