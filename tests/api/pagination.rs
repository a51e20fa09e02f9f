//! Tests for pagination.
