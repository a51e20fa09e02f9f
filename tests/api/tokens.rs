//! Tests for tokens.
