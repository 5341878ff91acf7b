//! The maximum age of a connection: when it is asked to go away, and when it is cut.
//!
//! Each age is shortened by a random amount up to a tenth: connections a deploy or a failover
//! opened together would otherwise all reconnect together, a thundering herd on whichever
//! replicas are up.

use std::time::Duration;

use crate::config::GatewayConfig;

/// The most an age is shortened by, as a fraction of it.
const JITTER: f64 = 0.1;

/// When a connection is asked to go away, and how long it then keeps its streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MaxAge {
    /// The age, jittered.
    pub(crate) age: Duration,
    /// How long after `age` the connection is cut.
    pub(crate) grace: Duration,
}

impl MaxAge {
    /// A freshly jittered age from `config`, or `None` when connections may live for ever.
    pub(crate) fn from_config(config: &GatewayConfig) -> Option<MaxAge> {
        config.max_connection_age.map(|age| MaxAge {
            age: jittered(age, rand::random::<f64>()),
            grace: config.max_connection_age_grace,
        })
    }

    /// When the connection is cut: its age and the grace after it.
    pub(crate) fn cut_after(&self) -> Duration {
        self.age.saturating_add(self.grace)
    }
}

/// `age` shortened by `draw` (in `[0, 1)`) times [`JITTER`] of it.
fn jittered(age: Duration, draw: f64) -> Duration {
    age.mul_f64(1.0 - JITTER * draw.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jitter_shortens_an_age_by_at_most_a_tenth() {
        let age = Duration::from_secs(100);
        assert_eq!(jittered(age, 0.0), age);
        assert_eq!(jittered(age, 0.5), Duration::from_secs(95));
        assert!(jittered(age, 0.999_999) > Duration::from_secs(90));
        let config = GatewayConfig {
            max_connection_age: Some(age),
            max_connection_age_grace: Duration::from_secs(7),
            ..GatewayConfig::default()
        };
        for _ in 0..100 {
            let max = MaxAge::from_config(&config).expect("an age is set");
            assert!(
                max.age <= age && max.age >= Duration::from_secs(90),
                "{max:?}"
            );
            assert_eq!(max.cut_after(), max.age + Duration::from_secs(7));
        }
    }

    #[test]
    fn no_age_set_is_no_maximum() {
        assert_eq!(MaxAge::from_config(&GatewayConfig::default()), None);
    }
}
