//! Tests for cowrie_sample.
