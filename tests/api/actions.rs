//! Tests for actions.
