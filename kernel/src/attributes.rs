//! Agent attributes: `name:value` pairs an operator gives an agent (`rack:r1;zone:a`), shown
//! with its offers so that frameworks can place tasks by constraint.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The most attributes one agent may have.
pub const MAX_ATTRIBUTES: usize = 64;

/// The longest attribute value.
pub const MAX_VALUE_LEN: usize = 256;

/// An agent's attributes, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes(pub BTreeMap<String, String>);

impl Attributes {
    /// Parses `name:value;name:value` (empty text: none). Names are
    /// `[A-Za-z0-9][A-Za-z0-9._-]*`; values are printable, without `;` or a newline.
    pub fn parse(text: &str) -> Result<Attributes, String> {
        let mut out = BTreeMap::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not name:value"))?;
            let (name, value) = (name.trim(), value.trim());
            crate::spec::validate_name(name)
                .map_err(|e| format!("invalid attribute name {name:?}: {e}"))?;
            if value.is_empty()
                || value.len() > MAX_VALUE_LEN
                || value.chars().any(|c| c.is_control())
            {
                return Err(format!(
                    "invalid value for attribute {name:?}: 1 to {MAX_VALUE_LEN} printable characters"
                ));
            }
            if out.insert(name.to_string(), value.to_string()).is_some() {
                return Err(format!("attribute {name:?} is given twice"));
            }
        }
        if out.len() > MAX_ATTRIBUTES {
            return Err(format!("more than {MAX_ATTRIBUTES} attributes"));
        }
        Ok(Attributes(out))
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One `name:value` per line, by name.
    pub fn lines(&self) -> String {
        self.0.iter().map(|(n, v)| format!("{n}:{v}\n")).collect()
    }
}

impl fmt::Display for Attributes {
    /// `name:value;name:value`, by name: what [`Attributes::parse`] takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(n, v)| format!("{n}:{v}")).collect();
        f.write_str(&parts.join(";"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_print_and_refuse_what_is_malformed() {
        let a = Attributes::parse(" zone:a ; rack:r1;").unwrap();
        assert_eq!(a.to_string(), "rack:r1;zone:a");
        assert_eq!(a.lines(), "rack:r1\nzone:a\n");
        assert_eq!(Attributes::parse(&a.to_string()).unwrap(), a);
        assert_eq!(Attributes::parse("").unwrap(), Attributes::default());
        for bad in [
            "rack",
            "rack:",
            ":x",
            "rack:a;rack:b",
            "bad name:x",
            "r:a\nb",
        ] {
            assert!(Attributes::parse(bad).is_err(), "{bad:?}");
        }
    }
}
