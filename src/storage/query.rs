//! Small helpers for statements whose `WHERE` clause depends on filters.

use sqlx::any::AnyArguments;
use sqlx::Arguments;

/// A value bound to a `$n` placeholder.
#[derive(Debug, Clone)]
pub enum Param {
    Int(i64),
    Text(String),
}

/// Collects `WHERE` conditions and their parameters, numbering placeholders.
///
/// Conditions are written with `?` for "the next parameter"; `Filter` turns
/// each into `$n`, which both SQLite and PostgreSQL understand.
#[derive(Debug, Default)]
pub struct Filter {
    conditions: Vec<String>,
    params: Vec<Param>,
}

impl Filter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition with one placeholder `?`, bound to `value`.
    pub fn condition(&mut self, sql: &str, value: Param) -> &mut Self {
        self.params.push(value);
        let numbered = sql.replacen('?', &format!("${}", self.params.len()), 1);
        self.conditions.push(numbered);
        self
    }

    /// Adds a condition with one placeholder when `value` is present.
    pub fn optional(&mut self, sql: &str, value: Option<Param>) -> &mut Self {
        if let Some(value) = value {
            self.condition(sql, value);
        }
        self
    }

    /// Adds a condition without parameters.
    pub fn raw(&mut self, sql: &str) -> &mut Self {
        self.conditions.push(sql.to_string());
        self
    }

    /// ` WHERE a AND b`, or nothing when there are no conditions.
    pub fn where_clause(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conditions.join(" AND "))
        }
    }

    /// The placeholder that the next parameter would get, e.g. for `LIMIT`.
    pub fn next_placeholder(&self) -> String {
        format!("${}", self.params.len() + 1)
    }

    /// The parameters in placeholder order, plus `extra` after them.
    pub fn arguments(&self, extra: &[Param]) -> AnyArguments<'static> {
        let mut arguments = AnyArguments::default();
        for param in self.params.iter().chain(extra) {
            let added = match param {
                Param::Int(value) => arguments.add(*value),
                Param::Text(value) => arguments.add(value.clone()),
            };
            added.expect("integers and text always encode");
        }
        arguments
    }
}

impl From<i64> for Param {
    fn from(value: i64) -> Self {
        Param::Int(value)
    }
}

impl From<String> for Param {
    fn from(value: String) -> Self {
        Param::Text(value)
    }
}

impl From<&str> for Param {
    fn from(value: &str) -> Self {
        Param::Text(value.to_string())
    }
}
