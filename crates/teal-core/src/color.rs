//! The two colors of a blue/green release.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two slots a revision can run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    /// The other color: the idle slot when `self` is live.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is neither `blue` nor `green`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown color {0:?}: allowed values are \"blue\" and \"green\"")]
pub struct UnknownColor(pub String);

impl FromStr for Color {
    type Err = UnknownColor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(UnknownColor(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_is_an_involution() {
        for c in Color::ALL {
            assert_ne!(c, c.other());
            assert_eq!(c, c.other().other());
        }
    }

    #[test]
    fn parse_and_display_round_trip() {
        for c in Color::ALL {
            assert_eq!(c.to_string().parse::<Color>().unwrap(), c);
        }
        let err = "red".parse::<Color>().unwrap_err();
        assert!(err.to_string().contains("\"blue\""), "{err}");
    }
}
