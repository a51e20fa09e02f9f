//! The policy document: the deployment's mode and the rules that govern
//! escalation, rate limits, automatic blocking and approval.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::actions::Source;
use crate::blocklist::entity::Network;
use crate::error::FieldError;
use crate::time::Timestamp;

/// Longest block the policy may ask for: 100 years, so that any expiry
/// computed from it stays far inside the representable range.
pub const MAX_BLOCK_SECONDS: i64 = 100 * 365 * 24 * 3600;

/// The deployment's security mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Normal,
    Elevated,
    Lockdown,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Elevated => "elevated",
            Mode::Lockdown => "lockdown",
        }
    }
}

/// High-or-critical threat events within a window that raise the mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalationThresholds {
    pub window_seconds: i64,
    pub elevated: i64,
    pub lockdown: i64,
}

/// A token bucket: sustained rate and burst size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_minute: i64,
    pub burst: i64,
}

/// Per-client limits on this API, by mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub normal: RateLimit,
    pub elevated: RateLimit,
    pub lockdown: RateLimit,
}

impl RateLimits {
    pub fn for_mode(&self, mode: Mode) -> &RateLimit {
        match mode {
            Mode::Normal => &self.normal,
            Mode::Elevated => &self.elevated,
            Mode::Lockdown => &self.lockdown,
        }
    }
}

/// What the detection engine asks for when one source keeps attacking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoBlock {
    pub enabled: bool,
    /// Events from one source within the window that trigger a block.
    pub threshold_events: i64,
    pub window_seconds: i64,
    pub block_seconds: i64,
    /// Each repeat offence multiplies the previous duration by this.
    pub repeat_multiplier: f64,
    pub max_block_seconds: i64,
}

/// Which request sources skip human approval, per mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoApprove {
    pub normal: Vec<Source>,
    pub elevated: Vec<Source>,
    pub lockdown: Vec<Source>,
}

impl AutoApprove {
    pub fn for_mode(&self, mode: Mode) -> &[Source] {
        match mode {
            Mode::Normal => &self.normal,
            Mode::Elevated => &self.elevated,
            Mode::Lockdown => &self.lockdown,
        }
    }
}

/// The writable part of the policy.
///
/// Unknown top-level fields are refused before this is parsed (the store
/// checks them against its writable fields), so it does not deny them
/// itself: with `deny_unknown_fields` its schema would forbid the version
/// fields that `Policy` flattens in beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicySettings {
    pub mode: Mode,
    pub auto_escalation_enabled: bool,
    pub escalation_thresholds: EscalationThresholds,
    /// Quiet time before the mode steps down one level.
    pub deescalation_cooldown_seconds: i64,
    pub rate_limits: RateLimits,
    pub auto_block: AutoBlock,
    pub auto_approve: AutoApprove,
    /// Four-eyes: the requester of an action may not approve it.
    pub require_distinct_approver: bool,
    /// Networks that nothing can block.
    #[schema(value_type = Vec<String>, example = json!(["127.0.0.0/8", "::1/128"]))]
    pub allowlist: Vec<Network>,
}

/// The policy with its version stamp.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Policy {
    #[serde(flatten)]
    pub settings: PolicySettings,
    pub version: i64,
    pub updated_at: Timestamp,
    pub updated_by: String,
}

impl Default for PolicySettings {
    fn default() -> Self {
        let limit = |requests_per_minute, burst| RateLimit {
            requests_per_minute,
            burst,
        };
        Self {
            mode: Mode::Normal,
            auto_escalation_enabled: true,
            escalation_thresholds: EscalationThresholds {
                window_seconds: 300,
                elevated: 20,
                lockdown: 200,
            },
            deescalation_cooldown_seconds: 1800,
            rate_limits: RateLimits {
                normal: limit(6000, 600),
                elevated: limit(1200, 120),
                lockdown: limit(120, 20),
            },
            auto_block: AutoBlock {
                enabled: true,
                threshold_events: 5,
                window_seconds: 600,
                block_seconds: 3600,
                repeat_multiplier: 2.0,
                max_block_seconds: 604_800,
            },
            auto_approve: AutoApprove {
                normal: vec![],
                elevated: vec![Source::Heimdall],
                lockdown: vec![Source::Heimdall, Source::System],
            },
            require_distinct_approver: true,
            allowlist: vec![
                Network::parse("127.0.0.0/8", false).expect("valid literal"),
                Network::parse("::1/128", false).expect("valid literal"),
            ],
        }
    }
}

impl PolicySettings {
    /// Rules that involve more than one field, or ranges the types allow.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut at_least = |field: &str, value: i64, minimum: i64| {
            if value < minimum {
                errors.push(FieldError::new(
                    field,
                    format!("must be at least {minimum}"),
                ));
            }
        };

        let thresholds = &self.escalation_thresholds;
        at_least(
            "escalation_thresholds.window_seconds",
            thresholds.window_seconds,
            1,
        );
        at_least("escalation_thresholds.elevated", thresholds.elevated, 1);
        at_least(
            "escalation_thresholds.lockdown",
            thresholds.lockdown,
            thresholds.elevated + 1,
        );
        at_least(
            "deescalation_cooldown_seconds",
            self.deescalation_cooldown_seconds,
            0,
        );
        for (mode, limit) in [
            ("normal", &self.rate_limits.normal),
            ("elevated", &self.rate_limits.elevated),
            ("lockdown", &self.rate_limits.lockdown),
        ] {
            at_least(
                &format!("rate_limits.{mode}.requests_per_minute"),
                limit.requests_per_minute,
                1,
            );
            at_least(&format!("rate_limits.{mode}.burst"), limit.burst, 1);
        }

        let block = &self.auto_block;
        at_least("auto_block.threshold_events", block.threshold_events, 1);
        at_least("auto_block.window_seconds", block.window_seconds, 1);
        at_least("auto_block.block_seconds", block.block_seconds, 1);
        at_least(
            "auto_block.max_block_seconds",
            block.max_block_seconds,
            block.block_seconds,
        );
        for (field, value) in [
            ("auto_block.block_seconds", block.block_seconds),
            ("auto_block.max_block_seconds", block.max_block_seconds),
        ] {
            if value > MAX_BLOCK_SECONDS {
                errors.push(FieldError::new(
                    field,
                    format!("must be at most {MAX_BLOCK_SECONDS}"),
                ));
            }
        }
        if !(block.repeat_multiplier.is_finite() && block.repeat_multiplier >= 1.0) {
            errors.push(FieldError::new(
                "auto_block.repeat_multiplier",
                "must be a finite number of at least 1.0",
            ));
        }
        errors
    }
}
