//! The resource model: exact fixed-point scalars, port-style ranges and sets, and bundles of
//! named resources written in Mesos syntax (`cpus:2;mem:1024;ports:[31000-31999]`).
//!
//! Ranges and sets add as unions, so the algebraic laws (`(a + b) - b == a`, and `a` contains
//! `a + b` only when `b` is empty) hold for resources that do not overlap, which is the only way
//! an agent's resources are ever split up.
//!
//! A resource may be reserved for a role: `cpus(eng):2` is two cpus only frameworks of role
//! `eng` (or a role under it) are offered. Each reservation is its own entry, keyed
//! `name(role)`; `cpus(*)` is written for unreserved cpus as Mesos does, and is stored as
//! `cpus`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::{Add, AddAssign, RangeInclusive, Sub, SubAssign};
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;
use smol_str::SmolStr;

/// The name of the cpus resource (a scalar).
pub const CPUS: &str = "cpus";
/// The name of the memory resource, in MB (a scalar).
pub const MEM: &str = "mem";
/// The name of the disk resource, in MB (a scalar).
pub const DISK: &str = "disk";
/// The name of the ports resource (ranges).
pub const PORTS: &str = "ports";

/// How many thousandths make one unit.
const MILLI_PER_UNIT: i64 = 1000;

// ---------------------------------------------------------------------------------------------
// Scalar

/// An exact quantity in thousandths, so 0.1 + 0.2 is exactly 0.3.
///
/// Resource quantities are never negative: text with a sign does not parse, and subtraction
/// that would go below zero fails ([`Scalar::checked_sub`]) or panics (`-`).
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Scalar(i64);

/// Why a text is not a valid scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScalarProblem {
    /// Not decimal digits with an optional fraction.
    #[error("expected a decimal number such as 2 or 0.25")]
    NotANumber,
    /// Resource quantities cannot be negative.
    #[error("must not be negative")]
    Negative,
    /// Finer than a thousandth.
    #[error("at most 3 decimal places")]
    TooPrecise,
    /// Does not fit in the fixed-point range.
    #[error("too large (at most 9223372036854775.807)")]
    TooLarge,
}

/// A text that does not parse as a [`Scalar`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid scalar {text:?}: {problem}")]
pub struct ScalarError {
    /// The offending text.
    pub text: String,
    /// What is wrong with it.
    pub problem: ScalarProblem,
}

impl Scalar {
    /// Zero.
    pub const ZERO: Scalar = Scalar(0);

    /// A scalar of this many thousandths.
    pub const fn from_milli(milli: i64) -> Scalar {
        Scalar(milli)
    }

    /// This scalar in thousandths.
    pub const fn milli(&self) -> i64 {
        self.0
    }

    /// A scalar of this many whole units.
    ///
    /// # Panics
    /// If `units` thousandths do not fit in an `i64`; see [`Scalar::checked_from_units`].
    pub fn from_units(units: u64) -> Scalar {
        Scalar::checked_from_units(units).expect("scalar units out of range")
    }

    /// A scalar of this many whole units, or None if it does not fit.
    pub fn checked_from_units(units: u64) -> Option<Scalar> {
        i64::try_from(units)
            .ok()?
            .checked_mul(MILLI_PER_UNIT)
            .map(Scalar)
    }

    /// Whether this is zero.
    pub const fn is_zero(&self) -> bool {
        self.0 == 0
    }

    /// The sum, or None on overflow.
    pub fn checked_add(self, other: Scalar) -> Option<Scalar> {
        self.0.checked_add(other.0).map(Scalar)
    }

    /// The difference, or None if it would be below zero.
    pub fn checked_sub(self, other: Scalar) -> Option<Scalar> {
        if other > self {
            return None;
        }
        self.0.checked_sub(other.0).map(Scalar)
    }

    /// The sum, clamped to the representable range.
    pub fn saturating_add(self, other: Scalar) -> Scalar {
        Scalar(self.0.saturating_add(other.0))
    }
}

/// Parses `digits[.digits]` into thousandths; shared with durations, which need more range.
pub(crate) fn parse_decimal_milli(text: &str) -> Result<u128, ScalarProblem> {
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (text, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return Err(ScalarProblem::NotANumber);
    }
    let frac = frac.unwrap_or("");
    if frac.len() > 3 {
        return Err(ScalarProblem::TooPrecise);
    }
    let mut units: u128 = 0;
    for b in int.bytes() {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(u128::from(b - b'0')))
            .ok_or(ScalarProblem::TooLarge)?;
    }
    let mut milli_frac: u128 = 0;
    for i in 0..3 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| b - b'0');
        milli_frac = milli_frac * 10 + u128::from(digit);
    }
    units
        .checked_mul(1000)
        .and_then(|m| m.checked_add(milli_frac))
        .ok_or(ScalarProblem::TooLarge)
}

impl FromStr for Scalar {
    type Err = ScalarError;

    fn from_str(text: &str) -> Result<Scalar, ScalarError> {
        let fail = |problem| ScalarError {
            text: text.to_string(),
            problem,
        };
        if let Some(rest) = text.strip_prefix('-') {
            // "-abc" is plain garbage; only a number with a sign is "negative".
            return Err(fail(match parse_decimal_milli(rest) {
                Err(ScalarProblem::NotANumber) => ScalarProblem::NotANumber,
                _ => ScalarProblem::Negative,
            }));
        }
        let milli = parse_decimal_milli(text).map_err(fail)?;
        i64::try_from(milli)
            .map(Scalar)
            .map_err(|_| fail(ScalarProblem::TooLarge))
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let (units, frac) = (abs / 1000, abs % 1000);
        if frac == 0 {
            write!(f, "{sign}{units}")
        } else {
            let digits = format!("{frac:03}");
            write!(f, "{sign}{units}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl Add for Scalar {
    type Output = Scalar;
    fn add(self, other: Scalar) -> Scalar {
        // Panic rather than wrap in release builds: a wrapped quantity is silently wrong.
        self.checked_add(other).expect("scalar addition overflowed")
    }
}

impl Sub for Scalar {
    type Output = Scalar;
    fn sub(self, other: Scalar) -> Scalar {
        self.checked_sub(other)
            .expect("scalar subtraction went below zero")
    }
}

impl AddAssign for Scalar {
    fn add_assign(&mut self, other: Scalar) {
        *self = *self + other;
    }
}

impl SubAssign for Scalar {
    fn sub_assign(&mut self, other: Scalar) {
        *self = *self - other;
    }
}

impl std::iter::Sum for Scalar {
    fn sum<I: Iterator<Item = Scalar>>(iter: I) -> Scalar {
        iter.fold(Scalar::ZERO, Add::add)
    }
}

// Serialized as decimal text: exact, unlike a JSON float.
impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal number with at most 3 decimal places")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Scalar::checked_from_units(v)
                    .ok_or_else(|| E::custom(format!("scalar {v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("scalar {v} must not be negative"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                // Display prints the shortest text that reads back as v, so 0.1 stays "0.1".
                format!("{v}").parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Ranges

/// Inclusive u64 ranges, kept sorted, disjoint and coalesced (`[1-3,4-6]` is `[1-6]`).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Ranges(SmallVec<[(u64, u64); 2]>);

/// Why a text is not valid ranges.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangesProblem {
    /// Not wrapped in brackets.
    #[error("expected ranges in brackets, e.g. [31000-31999,33000-33001]")]
    NotBracketed,
    /// An item that is not `start-end`.
    #[error("{0:?} is not a range: expected start-end with whole numbers, e.g. 31000-31999")]
    BadRange(String),
    /// A range whose start is above its end.
    #[error("range {start}-{end} runs backwards: the start must not exceed the end")]
    Backwards {
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
    },
}

/// A text that does not parse as [`Ranges`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid ranges {text:?}: {problem}")]
pub struct RangesError {
    /// The offending text.
    pub text: String,
    /// What is wrong with it.
    pub problem: RangesProblem,
}

impl Ranges {
    /// Ranges holding the values of these inclusive `(start, end)` pairs, normalized; a pair
    /// whose start exceeds its end holds nothing.
    pub fn new(pairs: Vec<(u64, u64)>) -> Ranges {
        pairs.into_iter().map(|(lo, hi)| lo..=hi).collect()
    }

    /// No values.
    pub const fn empty() -> Ranges {
        Ranges(SmallVec::new_const())
    }

    /// The single range `start..=end`; empty if `start > end`.
    pub fn single(range: RangeInclusive<u64>) -> Ranges {
        std::iter::once(range).collect()
    }

    /// Ranges holding exactly these values.
    pub fn from_values(values: impl IntoIterator<Item = u64>) -> Ranges {
        values.into_iter().map(|v| v..=v).collect()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many values are held (u128 because `[0-18446744073709551615]` holds 2^64).
    pub fn count(&self) -> u128 {
        self.0.iter().map(|&(lo, hi)| u128::from(hi - lo) + 1).sum()
    }

    /// The normalized ranges as inclusive `(start, end)` pairs.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// The normalized ranges.
    pub fn iter(&self) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        self.0.iter().map(|&(lo, hi)| lo..=hi)
    }

    /// Every value held, lowest first.
    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().flatten()
    }

    /// Whether `value` is held.
    pub fn contains_value(&self, value: u64) -> bool {
        self.find(value).is_some()
    }

    /// Whether every value of `other` is held.
    pub fn contains(&self, other: &Ranges) -> bool {
        // Self is coalesced, so each range of other must fit inside a single range of self.
        other
            .0
            .iter()
            .all(|&(lo, hi)| self.find(lo).is_some_and(|i| self.0[i].1 >= hi))
    }

    /// Whether any value is held by both.
    pub fn intersects(&self, other: &Ranges) -> bool {
        let (mut i, mut j) = (0, 0);
        while let (Some(&(alo, ahi)), Some(&(blo, bhi))) = (self.0.get(i), other.0.get(j)) {
            if ahi < blo {
                i += 1;
            } else if bhi < alo {
                j += 1;
            } else {
                return true;
            }
        }
        false
    }

    /// The union.
    pub fn add(&self, other: &Ranges) -> Ranges {
        self.iter().chain(other.iter()).collect()
    }

    /// The values of self not in other.
    pub fn difference(&self, other: &Ranges) -> Ranges {
        let mut out = SmallVec::new();
        let mut cut = other.0.iter().peekable();
        for &(lo, hi) in &self.0 {
            let mut lo = lo;
            // Skip cuts wholly below this range; they cannot touch later ranges either.
            while cut.next_if(|&&(_, chi)| chi < lo).is_some() {}
            let mut done = false;
            while let Some(&&(clo, chi)) = cut.peek() {
                if clo > hi {
                    break;
                }
                if clo > lo {
                    out.push((lo, clo - 1));
                }
                if chi >= hi {
                    done = true;
                    break;
                }
                lo = chi + 1;
                cut.next();
            }
            if !done {
                out.push((lo, hi));
            }
        }
        Ranges(out)
    }

    /// Self without other, or None unless self holds every value of other.
    pub fn checked_sub(&self, other: &Ranges) -> Option<Ranges> {
        self.contains(other).then(|| self.difference(other))
    }

    /// The lowest `count` values, or None if fewer are held.
    pub fn take_lowest(&self, count: usize) -> Option<Vec<u64>> {
        // Check first so an absurd count cannot make us allocate.
        if self.count() < count as u128 {
            return None;
        }
        Some(self.values().take(count).collect())
    }

    /// The index of the range holding `value`.
    fn find(&self, value: u64) -> Option<usize> {
        let i = self.0.partition_point(|&(_, hi)| hi < value);
        (i < self.0.len() && self.0[i].0 <= value).then_some(i)
    }

    /// Whether the invariant holds: sorted, each start <= end, disjoint and non-adjacent.
    pub fn is_normalized(&self) -> bool {
        self.0.iter().all(|&(lo, hi)| lo <= hi)
            && self
                .0
                .windows(2)
                .all(|w| w[0].1.checked_add(1).is_some_and(|next| next < w[1].0))
    }
}

impl FromIterator<RangeInclusive<u64>> for Ranges {
    fn from_iter<I: IntoIterator<Item = RangeInclusive<u64>>>(iter: I) -> Ranges {
        let mut pairs: Vec<(u64, u64)> = iter
            .into_iter()
            .filter(|r| !r.is_empty())
            .map(|r| (*r.start(), *r.end()))
            .collect();
        pairs.sort_unstable();
        let mut out: SmallVec<[(u64, u64); 2]> = SmallVec::with_capacity(pairs.len());
        for (lo, hi) in pairs {
            match out.last_mut() {
                // saturating_add: a range ending at u64::MAX swallows everything after it.
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Ranges(out)
    }
}

impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{lo}-{hi}")?;
        }
        f.write_str("]")
    }
}

impl FromStr for Ranges {
    type Err = RangesError;

    fn from_str(text: &str) -> Result<Ranges, RangesError> {
        let fail = |problem| RangesError {
            text: text.to_string(),
            problem,
        };
        let inner = text
            .trim()
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(|| fail(RangesProblem::NotBracketed))?;
        if inner.trim().is_empty() {
            return Ok(Ranges::empty());
        }
        let mut ranges = Vec::new();
        for item in inner.split(',') {
            let item = item.trim();
            let bad = || fail(RangesProblem::BadRange(item.to_string()));
            let (lo, hi) = item.split_once('-').ok_or_else(bad)?;
            let bound = |s: &str| {
                let s = s.trim();
                // u64::from_str takes a leading '+'; ranges are plain digits.
                if s.starts_with('+') {
                    None
                } else {
                    s.parse::<u64>().ok()
                }
            };
            let (lo, hi) = bound(lo).zip(bound(hi)).ok_or_else(bad)?;
            if lo > hi {
                return Err(fail(RangesProblem::Backwards { start: lo, end: hi }));
            }
            ranges.push(lo..=hi);
        }
        Ok(ranges.into_iter().collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Value

/// The value of one named resource.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Value {
    /// A quantity, e.g. `cpus:0.5`.
    Scalar(Scalar),
    /// Inclusive integer ranges, e.g. `ports:[31000-31999]`.
    Ranges(Ranges),
    /// Distinct items, e.g. `zones:{a,b}`.
    Set(BTreeSet<String>),
}

impl Value {
    /// The kind's name, for messages: "scalar", "ranges" or "set".
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::Ranges(_) => "ranges",
            Value::Set(_) => "set",
        }
    }

    /// Whether this value holds nothing (zero, no ranges, no items).
    pub fn is_empty(&self) -> bool {
        match self {
            Value::Scalar(s) => s.is_zero(),
            Value::Ranges(r) => r.is_empty(),
            Value::Set(s) => s.is_empty(),
        }
    }

    /// The sum (union for ranges and sets), or None if the kinds differ.
    fn add(&self, other: &Value) -> Option<Value> {
        Some(match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(a.saturating_add(*b)),
            (Value::Ranges(a), Value::Ranges(b)) => Value::Ranges(a.add(b)),
            (Value::Set(a), Value::Set(b)) => Value::Set(a.union(b).cloned().collect()),
            _ => return None,
        })
    }

    /// Whether self holds all of other (false if the kinds differ).
    fn contains(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => a >= b,
            (Value::Ranges(a), Value::Ranges(b)) => a.contains(b),
            (Value::Set(a), Value::Set(b)) => a.is_superset(b),
            _ => false,
        }
    }

    /// What self and other both hold (the smaller scalar; the common ranges or items), or
    /// None if the kinds differ.
    fn common(&self, other: &Value) -> Option<Value> {
        Some(match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar((*a).min(*b)),
            (Value::Ranges(a), Value::Ranges(b)) => Value::Ranges(a.difference(&a.difference(b))),
            (Value::Set(a), Value::Set(b)) => Value::Set(a.intersection(b).cloned().collect()),
            _ => return None,
        })
    }

    /// Self less other, or None unless self contains other.
    fn checked_sub(&self, other: &Value) -> Option<Value> {
        if !self.contains(other) {
            return None;
        }
        Some(match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(*a - *b),
            (Value::Ranges(a), Value::Ranges(b)) => Value::Ranges(a.difference(b)),
            (Value::Set(a), Value::Set(b)) => Value::Set(a.difference(b).cloned().collect()),
            _ => return None,
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Scalar(s) => s.fmt(f),
            Value::Ranges(r) => r.fmt(f),
            Value::Set(items) => {
                f.write_str("{")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(item)?;
                }
                f.write_str("}")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resources

/// Why a resources text does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// An entry without `name:value`.
    #[error("missing \":\" in {entry:?}: expected name:value, e.g. cpus:2")]
    MissingColon {
        /// The entry.
        entry: String,
    },
    /// A name with characters outside `[A-Za-z0-9_.-]`.
    #[error(
        "invalid resource name {name:?}: expected letters, digits, \"_\", \".\" and \"-\" only"
    )]
    InvalidName {
        /// The name.
        name: String,
    },
    /// A scalar value that does not parse.
    #[error("invalid scalar {text:?} for {name}: {problem}")]
    InvalidScalar {
        /// The resource name.
        name: String,
        /// The value text.
        text: String,
        /// What is wrong with it.
        problem: ScalarProblem,
    },
    /// A ranges value that does not parse.
    #[error("invalid ranges {text:?} for {name}: {problem}")]
    InvalidRanges {
        /// The resource name.
        name: String,
        /// The value text.
        text: String,
        /// What is wrong with it.
        problem: RangesProblem,
    },
    /// A reservation whose role is not a role path.
    #[error(
        "invalid reservation in {entry:?}: {reason}; write name(role):value, e.g. cpus(eng):2"
    )]
    InvalidReservation {
        /// The entry.
        entry: String,
        /// What is wrong with the role.
        reason: String,
    },
    /// A set value that does not parse.
    #[error("invalid set {text:?} for {name}: expected {{item,item}} with items of letters, digits, \"_\", \".\" and \"-\"")]
    InvalidSet {
        /// The resource name.
        name: String,
        /// The value text.
        text: String,
    },
    /// One name given values of two kinds.
    #[error("resource {name:?} is given as both {first} and {second}; use one kind per name")]
    KindMismatch {
        /// The resource name.
        name: String,
        /// The kind seen first.
        first: &'static str,
        /// The conflicting kind.
        second: &'static str,
    },
    /// A scalar whose duplicates add up past the representable range.
    #[error("resource {name:?} adds up to more than 9223372036854775.807")]
    Overflow {
        /// The resource name.
        name: String,
    },
}

/// Named resources, e.g. an agent's capacity or a task's needs.
///
/// Values that hold nothing (zero scalars, empty ranges and sets) are never stored, so two
/// bundles that hold the same are equal.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Resources(BTreeMap<SmolStr, Value>);

/// Whether `name` is a valid resource name (`[A-Za-z0-9_.-]+`).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Splits a resource key into its name and the role it is reserved for: `cpus(eng)` is
/// `("cpus", Some("eng"))`, `cpus` is `("cpus", None)`.
pub fn split_key(key: &str) -> (&str, Option<&str>) {
    match key.split_once('(') {
        Some((name, rest)) => (name, Some(rest.strip_suffix(')').unwrap_or(rest))),
        None => (key, None),
    }
}

/// The key of resource `name` reserved for `role` (`None`: unreserved).
pub fn key(name: &str, role: Option<&str>) -> String {
    match role {
        Some(role) if role != crate::allocator::roles::DEFAULT_ROLE => format!("{name}({role})"),
        _ => name.to_string(),
    }
}

/// Whether `key` is a valid key: a name, or a name reserved for a role path (`cpus(eng/web)`).
fn is_valid_key(key: &str) -> bool {
    match split_key(key) {
        (name, None) => is_valid_name(name),
        (name, Some(role)) => {
            is_valid_name(name)
                && key.ends_with(')')
                && role != crate::allocator::roles::DEFAULT_ROLE
                && crate::allocator::roles::validate_role(role).is_ok()
        }
    }
}

impl Resources {
    /// No resources.
    pub fn new() -> Resources {
        Resources::default()
    }

    /// Parses Mesos syntax, e.g. `cpus:2;mem:1024;ports:[31000-31999];zones:{a,b}`.
    ///
    /// Repeated names add up; empty entries (a trailing `;`) are skipped.
    pub fn parse(text: &str) -> Result<Resources, ResourceError> {
        let mut out = Resources::new();
        for entry in text.split(';') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (name, raw) = entry
                .split_once(':')
                .ok_or_else(|| ResourceError::MissingColon {
                    entry: entry.to_string(),
                })?;
            let (name, raw) = (name.trim(), raw.trim());
            let (base, role) = split_key(name);
            if !is_valid_name(base) {
                return Err(ResourceError::InvalidName {
                    name: base.to_string(),
                });
            }
            if let Some(role) = role {
                let reason = if !name.ends_with(')') {
                    Some("no closing \")\"".to_string())
                } else {
                    crate::allocator::roles::validate_role(role)
                        .err()
                        .map(|e| format!("role {role:?}: {e}"))
                };
                if let Some(reason) = reason {
                    return Err(ResourceError::InvalidReservation {
                        entry: entry.to_string(),
                        reason,
                    });
                }
            }
            let name = key(base, role);
            let name = name.as_str();
            let value = parse_value(name, raw)?;
            match out.0.get(name) {
                Some(old) => {
                    let sum = match (old, &value) {
                        (Value::Scalar(a), Value::Scalar(b)) => {
                            Value::Scalar(a.checked_add(*b).ok_or_else(|| {
                                ResourceError::Overflow {
                                    name: name.to_string(),
                                }
                            })?)
                        }
                        _ => old.add(&value).ok_or_else(|| ResourceError::KindMismatch {
                            name: name.to_string(),
                            first: old.kind(),
                            second: value.kind(),
                        })?,
                    };
                    out.0.insert(SmolStr::new(name), sum);
                }
                None => {
                    out.0.insert(SmolStr::new(name), value);
                }
            }
        }
        // One kind per name, however it is reserved.
        let mut kinds: BTreeMap<&str, &Value> = BTreeMap::new();
        for (k, v) in &out.0 {
            let base = split_key(k).0;
            match kinds.get(base) {
                Some(first) if first.kind() != v.kind() => {
                    return Err(ResourceError::KindMismatch {
                        name: base.to_string(),
                        first: first.kind(),
                        second: v.kind(),
                    })
                }
                Some(_) => {}
                None => {
                    kinds.insert(base, v);
                }
            }
        }
        // Empty values are parsed first so a name's kind is checked even when it is zero.
        out.0.retain(|_, v| !v.is_empty());
        Ok(out)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of one resource, if held.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// Every held resource, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The scalar at key `name` (unreserved, or `cpus(eng)`), zero if absent or not a scalar.
    pub fn scalar(&self, name: &str) -> Scalar {
        match self.0.get(name) {
            Some(Value::Scalar(s)) => *s,
            _ => Scalar::ZERO,
        }
    }

    /// The ranges `name`, empty if absent or not ranges.
    pub fn ranges(&self, name: &str) -> Ranges {
        match self.0.get(name) {
            Some(Value::Ranges(r)) => r.clone(),
            _ => Ranges::empty(),
        }
    }

    /// The set `name`, empty if absent or not a set.
    pub fn set(&self, name: &str) -> BTreeSet<String> {
        match self.0.get(name) {
            Some(Value::Set(s)) => s.clone(),
            _ => BTreeSet::new(),
        }
    }

    /// The entries of resource `name`, at every key it can be held at: `name` itself and
    /// `name(...)`. They come together and first from `name` on: `(` sorts before every
    /// character a name may hold. No key is built (this is asked once or more per offer).
    fn entries_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a SmolStr, &'a Value)> {
        use std::ops::Bound;
        self.0
            .range::<str, _>((Bound::Included(name), Bound::Unbounded))
            .take_while(move |(k, _)| {
                k.strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('('))
            })
    }

    /// The scalar `name` however it is reserved: `cpus:1;cpus(eng):2` has 3 cpus.
    pub fn scalar_all(&self, name: &str) -> Scalar {
        self.entries_of(name)
            .filter_map(|(_, v)| match v {
                Value::Scalar(s) => Some(*s),
                _ => None,
            })
            .fold(Scalar::ZERO, Scalar::saturating_add)
    }

    /// The cpus, however reserved.
    pub fn cpus(&self) -> Scalar {
        self.scalar_all(CPUS)
    }

    /// The memory in MB, however reserved.
    pub fn mem(&self) -> Scalar {
        self.scalar_all(MEM)
    }

    /// The disk in MB, however reserved.
    pub fn disk(&self) -> Scalar {
        self.scalar_all(DISK)
    }

    /// Whether any of these is reserved for a role.
    pub fn has_reservations(&self) -> bool {
        self.0.keys().any(|k| k.contains('('))
    }

    /// Only the entries whose reservation `keep` accepts (`None`: unreserved).
    fn filter_roles(&self, keep: impl Fn(Option<&str>) -> bool) -> Resources {
        Resources(
            self.0
                .iter()
                .filter(|(k, _)| keep(split_key(k).1))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// Only the unreserved resources.
    pub fn unreserved(&self) -> Resources {
        self.filter_roles(|r| r.is_none())
    }

    /// Only the reserved resources, of every role.
    pub fn reserved(&self) -> Resources {
        self.filter_roles(|r| r.is_some())
    }

    /// Only the resources reserved for `role` or a role under it.
    pub fn reserved_within(&self, role: &str) -> Resources {
        self.filter_roles(|r| r.is_some_and(|r| crate::allocator::drf::is_within(r, role)))
    }

    /// What may be offered of these for `role`: the unreserved resources and those reserved
    /// for `role` or a role above it (a reservation for `eng` serves `eng/web`).
    pub fn usable_by(&self, role: &str) -> Resources {
        if !self.has_reservations() {
            return self.clone();
        }
        self.filter_roles(|r| r.is_none_or(|r| crate::allocator::drf::is_within(role, r)))
    }

    /// The same amounts with no reservations: `cpus:1;cpus(eng):2` is `cpus:3`.
    pub fn flatten(&self) -> std::borrow::Cow<'_, Resources> {
        if !self.has_reservations() {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut out = Resources::new();
        for (k, v) in &self.0 {
            out = out.add(&Resources::new().with_value(split_key(k).0, v.clone()));
        }
        std::borrow::Cow::Owned(out)
    }

    /// The same amounts, all reserved for `role` (`*`: unreserved).
    pub fn reserved_for(&self, role: &str) -> Resources {
        let mut out = Resources::new();
        for (k, v) in &self.flatten().0 {
            out = out.add(&Resources::new().with_value(&key(k, Some(role)), v.clone()));
        }
        out
    }

    /// Takes `want` (unreserved names, as a task asks) from these, reservations first (the
    /// most specific role first), then unreserved resources: what is taken, keyed by its
    /// reservations, or None if these do not hold all of it.
    pub fn draw(&self, want: &Resources) -> Option<Resources> {
        let mut out = Resources::new();
        for (name, wanted) in &want.flatten().0 {
            let mut left = wanted.clone();
            let mut keys: Vec<&SmolStr> = self
                .entries_of(name)
                .map(|(k, _)| k)
                .filter(|k| *k != name)
                .collect();
            // The longest role path is the most specific reservation; unreserved comes last.
            keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
            keys.extend(self.0.get_key_value(name).map(|(k, _)| k));
            for k in keys {
                if left.is_empty() {
                    break;
                }
                let Some(taken) = self.0[k.as_str()].common(&left) else {
                    continue;
                };
                if taken.is_empty() {
                    continue;
                }
                left = left.checked_sub(&taken)?;
                out.0.insert(k.clone(), taken);
            }
            if !left.is_empty() {
                return None;
            }
        }
        Some(out)
    }

    /// These resources with `name` (a key: `cpus`, or `cpus(eng)`) set to `value`, replacing
    /// any value it had.
    ///
    /// # Panics
    /// If `name` is not a valid key (a programming error: names are literals or parsed keys).
    pub fn with_value(mut self, name: &str, value: Value) -> Resources {
        assert!(is_valid_key(name), "invalid resource name {name:?}");
        if value.is_empty() {
            self.0.remove(name);
        } else {
            self.0.insert(SmolStr::new(name), value);
        }
        self
    }

    /// These resources with the scalar `name` set to `value`; see [`Resources::with_value`].
    pub fn with_scalar(self, name: &str, value: Scalar) -> Resources {
        self.with_value(name, Value::Scalar(value))
    }

    /// These resources with the ranges `name` set to `ranges`; see [`Resources::with_value`].
    pub fn with_ranges(self, name: &str, ranges: Ranges) -> Resources {
        self.with_value(name, Value::Ranges(ranges))
    }

    /// The sum, or an error if a name holds different kinds in the two.
    pub fn try_add(&self, other: &Resources) -> Result<Resources, ResourceError> {
        let mut out = self.clone();
        for (name, value) in &other.0 {
            let sum = match self.0.get(name) {
                Some(old) => old.add(value).ok_or_else(|| ResourceError::KindMismatch {
                    name: name.to_string(),
                    first: old.kind(),
                    second: value.kind(),
                })?,
                None => value.clone(),
            };
            out.0.insert(name.clone(), sum);
        }
        Ok(out)
    }

    /// The sum: scalars add (saturating), ranges and sets unite.
    ///
    /// Where a name holds different kinds in the two, self's value is kept; such bundles can
    /// only come from separately parsed texts, and [`Resources::try_add`] reports them.
    pub fn add(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        out.add_assign(other);
        out
    }

    /// Adds `other` in place: what [`Resources::add`] returns, without copying self (sums kept
    /// as tasks come and go, and totals over every agent, are made this way).
    pub fn add_assign(&mut self, other: &Resources) {
        for (name, value) in &other.0 {
            match self.0.get_mut(name) {
                Some(old) => {
                    if let Some(sum) = old.add(value) {
                        *old = sum;
                    }
                }
                None => {
                    self.0.insert(name.clone(), value.clone());
                }
            }
        }
    }

    /// Adds the scalars of `other` (at every key, reserved or not) in place, leaving out its
    /// ranges and sets: sums that only shares and quotas read (the allocator's) are kept so.
    pub fn add_scalars(&mut self, other: &Resources) {
        for (name, value) in &other.0 {
            let Value::Scalar(s) = value else { continue };
            match self.0.get_mut(name) {
                Some(Value::Scalar(old)) => *old = old.saturating_add(*s),
                Some(_) => {}
                None => {
                    self.0.insert(name.clone(), Value::Scalar(*s));
                }
            }
        }
    }

    /// Takes the scalars of `other` away in place, each down to nothing at least: the reverse
    /// of [`Resources::add_scalars`].
    pub fn sub_scalars(&mut self, other: &Resources) {
        for (name, value) in &other.0 {
            let Value::Scalar(s) = value else { continue };
            if let Some(Value::Scalar(old)) = self.0.get_mut(name) {
                match old.checked_sub(*s) {
                    Some(left) if !left.is_zero() => *old = left,
                    _ => {
                        self.0.remove(name);
                    }
                }
            }
        }
    }

    /// Whether self holds all of other.
    pub fn contains(&self, other: &Resources) -> bool {
        other
            .0
            .iter()
            .all(|(name, v)| self.0.get(name).is_some_and(|mine| mine.contains(v)))
    }

    /// Self less other, or None unless self contains other.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        let mut out = self.clone();
        out.checked_sub_assign(other).then_some(out)
    }

    /// Takes other out of self in place if self contains it (what [`Resources::checked_sub`]
    /// returns), and says whether it did; self is unchanged if not.
    pub fn checked_sub_assign(&mut self, other: &Resources) -> bool {
        if !self.contains(other) {
            return false;
        }
        for (name, value) in &other.0 {
            let Some(mine) = self.0.get_mut(name) else {
                continue;
            };
            // Contained, so the subtraction is defined.
            match mine.checked_sub(value) {
                Some(rest) if !rest.is_empty() => *mine = rest,
                _ => {
                    self.0.remove(name);
                }
            }
        }
        true
    }

    /// Self less other, entry by entry, as far as self holds it (scalars stop at zero).
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        for (name, value) in &other.0 {
            let Some(mine) = self.0.get(name) else {
                continue;
            };
            let common = mine.common(value).unwrap_or_else(|| mine.clone());
            match mine.checked_sub(&common) {
                Some(rest) if !rest.is_empty() => {
                    out.0.insert(name.clone(), rest);
                }
                _ => {
                    out.0.remove(name);
                }
            }
        }
        out
    }

    /// What either holds, entry by entry: the larger scalar, the union of ranges and sets
    /// (what a set of offers that may overlap can take at most).
    pub fn join(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        for (name, value) in &other.0 {
            let joined = match (self.0.get(name), value) {
                (Some(Value::Scalar(a)), Value::Scalar(b)) => Value::Scalar((*a).max(*b)),
                (Some(mine), v) => mine.add(v).unwrap_or_else(|| mine.clone()),
                (None, v) => v.clone(),
            };
            out.0.insert(name.clone(), joined);
        }
        out
    }

    /// The lowest `count` free ports of the `ports` ranges (however reserved), or None if
    /// fewer are free.
    pub fn take_ports(&self, count: usize) -> Option<Vec<u64>> {
        let all = self
            .entries_of(PORTS)
            .filter_map(|(_, v)| match v {
                Value::Ranges(r) => Some(r),
                _ => None,
            })
            .fold(Ranges::empty(), |acc, r| acc.add(r));
        all.take_lowest(count)
    }
}

/// Parses one value; the first character picks the kind.
fn parse_value(name: &str, raw: &str) -> Result<Value, ResourceError> {
    if raw.starts_with('[') {
        raw.parse::<Ranges>()
            .map(Value::Ranges)
            .map_err(|e| ResourceError::InvalidRanges {
                name: name.to_string(),
                text: raw.to_string(),
                problem: e.problem,
            })
    } else if raw.starts_with('{') {
        let bad = || ResourceError::InvalidSet {
            name: name.to_string(),
            text: raw.to_string(),
        };
        let inner = raw
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .ok_or_else(bad)?;
        if inner.trim().is_empty() {
            return Ok(Value::Set(BTreeSet::new()));
        }
        inner
            .split(',')
            .map(|item| {
                let item = item.trim();
                if is_valid_name(item) {
                    Ok(item.to_string())
                } else {
                    Err(bad())
                }
            })
            .collect::<Result<_, _>>()
            .map(Value::Set)
    } else {
        raw.parse::<Scalar>()
            .map(Value::Scalar)
            .map_err(|e| ResourceError::InvalidScalar {
                name: name.to_string(),
                text: raw.to_string(),
                problem: e.problem,
            })
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{name}:{value}")?;
        }
        Ok(())
    }
}

impl FromStr for Resources {
    type Err = ResourceError;

    fn from_str(text: &str) -> Result<Resources, ResourceError> {
        Resources::parse(text)
    }
}

// Serialized as the Mesos text, so JSON shows "cpus:2;mem:1024".
impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Resources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Resources, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Resources::parse(&text).map_err(de::Error::custom)
    }
}

/// A running sum of resource bundles from which each bundle added can be taken back exactly.
/// Scalars add up; ranges and sets unite, so a value several bundles hold (the same ports on
/// two agents) is counted, and stays in the sum until the last of them is taken back, which a
/// plain [`Resources::saturating_sub`] of a union cannot know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    scalars: BTreeMap<String, Scalar>,
    /// Each name's ranges, by the exact range a bundle held, with how many held it.
    ranges: BTreeMap<String, BTreeMap<(u64, u64), usize>>,
    /// Each name's items, with how many bundles held each.
    sets: BTreeMap<String, BTreeMap<String, usize>>,
}

impl Tally {
    /// Whether nothing is in it.
    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.ranges.is_empty() && self.sets.is_empty()
    }

    /// Adds a bundle.
    pub fn add(&mut self, r: &Resources) {
        for (name, v) in r.iter() {
            match v {
                Value::Scalar(s) => {
                    let sum = self.scalars.entry(name.to_string()).or_default();
                    *sum = sum.saturating_add(*s);
                }
                Value::Ranges(ranges) => {
                    let counts = self.ranges.entry(name.to_string()).or_default();
                    for &pair in ranges.ranges() {
                        *counts.entry(pair).or_default() += 1;
                    }
                }
                Value::Set(items) => {
                    let counts = self.sets.entry(name.to_string()).or_default();
                    for item in items {
                        *counts.entry(item.clone()).or_default() += 1;
                    }
                }
            }
        }
    }

    /// Takes back a bundle added before (what was never added is ignored).
    pub fn remove(&mut self, r: &Resources) {
        fn uncount<K: Ord>(counts: &mut BTreeMap<K, usize>, key: &K) {
            if let Some(n) = counts.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(key);
                }
            }
        }
        for (name, v) in r.iter() {
            match v {
                Value::Scalar(s) => {
                    if let Some(sum) = self.scalars.get_mut(name) {
                        *sum = sum.checked_sub(*s).unwrap_or_default();
                        if sum.is_zero() {
                            self.scalars.remove(name);
                        }
                    }
                }
                Value::Ranges(ranges) => {
                    if let Some(counts) = self.ranges.get_mut(name) {
                        for pair in ranges.ranges() {
                            uncount(counts, pair);
                        }
                        if counts.is_empty() {
                            self.ranges.remove(name);
                        }
                    }
                }
                Value::Set(items) => {
                    if let Some(counts) = self.sets.get_mut(name) {
                        for item in items {
                            uncount(counts, item);
                        }
                        if counts.is_empty() {
                            self.sets.remove(name);
                        }
                    }
                }
            }
        }
    }

    /// The sum: what [`Resources::add`] of every bundle still in it gives.
    pub fn sum(&self) -> Resources {
        let mut out = Resources::new();
        for (name, s) in &self.scalars {
            out = out.with_value(name, Value::Scalar(*s));
        }
        for (name, counts) in &self.ranges {
            let ranges: Ranges = counts.keys().map(|&(lo, hi)| lo..=hi).collect();
            out = out.with_value(name, Value::Ranges(ranges));
        }
        for (name, counts) in &self.sets {
            out = out.with_value(name, Value::Set(counts.keys().cloned().collect()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res(text: &str) -> Resources {
        Resources::parse(text).unwrap()
    }

    fn sc(text: &str) -> Scalar {
        text.parse().unwrap()
    }

    fn rg(text: &str) -> Ranges {
        text.parse().unwrap()
    }

    // --- Scalar ---

    #[test]
    fn scalar_tenths_add_exactly() {
        assert_eq!(sc("0.1") + sc("0.2"), sc("0.3"));
        assert_eq!((sc("0.1") + sc("0.2")).milli(), 300);
    }

    #[test]
    fn scalar_parses_decimal_text_to_thousandths() {
        assert_eq!(sc("0.1").milli(), 100);
        assert_eq!(sc("2").milli(), 2000);
        assert_eq!(sc("1024").milli(), 1_024_000);
        assert_eq!(sc("0.125").milli(), 125);
        assert_eq!(sc("007.50").milli(), 7500);
        assert_eq!(sc("0").milli(), 0);
    }

    #[test]
    fn scalar_displays_minimal_form() {
        for text in [
            "0.3",
            "2",
            "1024",
            "0.125",
            "0",
            "0.05",
            "9223372036854775.807",
        ] {
            assert_eq!(sc(text).to_string(), text);
        }
        assert_eq!(sc("1.500").to_string(), "1.5");
        assert_eq!(Scalar::from_milli(-1500).to_string(), "-1.5");
        assert_eq!(
            Scalar::from_milli(i64::MIN).to_string(),
            "-9223372036854775.808"
        );
    }

    #[test]
    fn scalar_rejects_more_than_three_decimals() {
        let e = "1.2345".parse::<Scalar>().unwrap_err();
        assert_eq!(e.problem, ScalarProblem::TooPrecise);
        assert_eq!(
            e.to_string(),
            "invalid scalar \"1.2345\": at most 3 decimal places"
        );
    }

    #[test]
    fn scalar_rejects_negative_numbers() {
        for text in ["-1", "-0", "-0.5"] {
            let e = text.parse::<Scalar>().unwrap_err();
            assert_eq!(e.problem, ScalarProblem::Negative, "{text}");
        }
    }

    #[test]
    fn scalar_rejects_non_decimal_text() {
        for text in [
            "", "NaN", "nan", "inf", "-inf", "1e3", ".5", "5.", "+1", " 1", "1 ", "0x10", "1.2.3",
            "--1", "١",
        ] {
            let e = text.parse::<Scalar>().unwrap_err();
            assert_eq!(e.problem, ScalarProblem::NotANumber, "{text:?}");
        }
    }

    #[test]
    fn scalar_rejects_values_beyond_the_fixed_point_range() {
        assert_eq!(
            "9223372036854775.808"
                .parse::<Scalar>()
                .unwrap_err()
                .problem,
            ScalarProblem::TooLarge
        );
        assert_eq!(
            "99999999999999999999999999999999999999999"
                .parse::<Scalar>()
                .unwrap_err()
                .problem,
            ScalarProblem::TooLarge
        );
    }

    #[test]
    fn scalar_from_units_counts_whole_units() {
        assert_eq!(Scalar::from_units(3), sc("3"));
        assert_eq!(Scalar::checked_from_units(u64::MAX), None);
    }

    #[test]
    fn scalar_checked_arithmetic_reports_overflow() {
        let max = Scalar::from_milli(i64::MAX);
        assert_eq!(max.checked_add(Scalar::from_milli(1)), None);
        assert_eq!(max.saturating_add(Scalar::from_milli(1)), max);
        assert_eq!(sc("1").checked_sub(sc("1.001")), None);
        assert_eq!(sc("1").checked_sub(sc("0.999")), Some(sc("0.001")));
        let mut s = sc("1");
        s += sc("0.5");
        s -= sc("0.25");
        assert_eq!(s, sc("1.25"));
        assert_eq!(
            [sc("0.1"), sc("0.2"), sc("0.3")]
                .into_iter()
                .sum::<Scalar>(),
            sc("0.6")
        );
    }

    #[test]
    fn scalar_serializes_as_decimal_text_and_reads_numbers_exactly() {
        assert_eq!(serde_json::to_string(&sc("0.1")).unwrap(), "\"0.1\"");
        assert_eq!(
            serde_json::from_str::<Scalar>("\"0.1\"").unwrap(),
            sc("0.1")
        );
        assert_eq!(serde_json::from_str::<Scalar>("0.1").unwrap(), sc("0.1"));
        assert_eq!(serde_json::from_str::<Scalar>("3").unwrap(), sc("3"));
        assert!(serde_json::from_str::<Scalar>("-3").is_err());
        assert!(serde_json::from_str::<Scalar>("0.1234").is_err());
    }

    #[test]
    #[should_panic(expected = "below zero")]
    fn scalar_subtraction_below_zero_panics() {
        let _ = sc("0.1") - sc("0.2");
    }

    // --- Ranges ---

    #[test]
    fn ranges_built_from_pairs_are_normalized() {
        let r = Ranges::new(vec![(5, 9), (1, 4), (20, 10), (12, 12)]);
        assert_eq!(r.ranges(), &[(1, 9), (12, 12)]);
        assert_eq!(r.to_string(), "[1-9,12-12]");
        assert_eq!(Ranges::single(3..=4), rg("[3-4]"));
        assert_eq!(Ranges::from_values([7, 3, 4]), rg("[3-4,7-7]"));
        assert_eq!(rg("[1-2,9-9]").values().collect::<Vec<_>>(), [1, 2, 9]);
    }

    #[test]
    fn ranges_coalesce_adjacent_and_overlapping() {
        assert_eq!(rg("[31000-31999,32000-32005]").to_string(), "[31000-32005]");
        assert_eq!(rg("[5-9, 1-3 ,2-4]").to_string(), "[1-9]");
        assert_eq!(rg("[1-1,3-3]").to_string(), "[1-1,3-3]");
        assert_eq!(rg("[]").to_string(), "[]");
        assert_eq!(
            rg("[18446744073709551610-18446744073709551615,0-0,1-18446744073709551609]")
                .to_string(),
            "[0-18446744073709551615]"
        );
    }

    #[test]
    fn ranges_reject_malformed_text() {
        let problem = |t: &str| t.parse::<Ranges>().unwrap_err().problem;
        assert_eq!(problem("31000-31999"), RangesProblem::NotBracketed);
        assert_eq!(problem("[5]"), RangesProblem::BadRange("5".into()));
        assert_eq!(problem("[a-b]"), RangesProblem::BadRange("a-b".into()));
        assert_eq!(problem("[1-2,]"), RangesProblem::BadRange("".into()));
        assert_eq!(problem("[-1-2]"), RangesProblem::BadRange("-1-2".into()));
        assert_eq!(problem("[+1-2]"), RangesProblem::BadRange("+1-2".into()));
        assert_eq!(
            problem("[5-3]"),
            RangesProblem::Backwards { start: 5, end: 3 }
        );
        assert_eq!(
            "[5-3]".parse::<Ranges>().unwrap_err().to_string(),
            "invalid ranges \"[5-3]\": range 5-3 runs backwards: the start must not exceed the end"
        );
    }

    #[test]
    fn ranges_difference_splits_around_the_removed_part() {
        assert_eq!(
            rg("[1-10]").difference(&rg("[3-4,7-7]")),
            rg("[1-2,5-6,8-10]")
        );
        assert_eq!(rg("[1-10]").difference(&rg("[0-20]")), rg("[]"));
        assert_eq!(rg("[1-5,8-9]").difference(&rg("[4-8]")), rg("[1-3,9-9]"));
        assert_eq!(
            rg("[0-18446744073709551615]")
                .difference(&rg("[18446744073709551615-18446744073709551615]")),
            rg("[0-18446744073709551614]")
        );
    }

    #[test]
    fn ranges_contain_only_wholly_covered_ranges() {
        assert!(rg("[1-10]").contains(&rg("[2-3,9-10]")));
        assert!(!rg("[1-5,7-10]").contains(&rg("[5-7]")));
        assert!(rg("[1-5]").contains(&rg("[]")));
        assert!(!rg("[]").contains(&rg("[1-1]")));
        assert_eq!(rg("[1-5]").checked_sub(&rg("[6-6]")), None);
        assert!(rg("[1-5]").intersects(&rg("[5-6]")));
        assert!(!rg("[1-5]").intersects(&rg("[6-6]")));
    }

    #[test]
    fn ranges_take_lowest_values_across_ranges() {
        assert_eq!(rg("[10-11,20-30]").take_lowest(3), Some(vec![10, 11, 20]));
        assert_eq!(rg("[10-11]").take_lowest(3), None);
        assert_eq!(rg("[]").take_lowest(0), Some(vec![]));
        assert_eq!(rg("[0-18446744073709551615]").count(), 1u128 << 64);
    }

    // --- Resources ---

    #[test]
    fn resources_parse_mesos_syntax() {
        let r = res("cpus:2;mem:1024;disk:4096;ports:[31000-31999,33000-33001];zones:{a,b}");
        assert_eq!(r.cpus(), sc("2"));
        assert_eq!(r.mem(), sc("1024"));
        assert_eq!(r.disk(), sc("4096"));
        assert_eq!(r.ranges("ports"), rg("[31000-31999,33000-33001]"));
        assert_eq!(r.set("zones"), ["a", "b"].map(String::from).into());
    }

    #[test]
    fn resources_display_canonically_sorted_without_empty_values() {
        let r = res(" mem : 1024 ; cpus:2;disk:4096;ports:[31000-31999];gpus:0;zones:{};x:[] ;");
        assert_eq!(
            r.to_string(),
            "cpus:2;disk:4096;mem:1024;ports:[31000-31999]"
        );
    }

    #[test]
    fn resources_parse_empty_text_as_nothing() {
        assert!(res("").is_empty());
        assert!(res("  ").is_empty());
        assert_eq!(res("").to_string(), "");
    }

    #[test]
    fn resources_add_up_repeated_names() {
        assert_eq!(
            res("cpus:0.1;cpus:0.2;ports:[1-2];ports:[3-4];z:{a};z:{b}"),
            res("cpus:0.3;ports:[1-4];z:{a,b}")
        );
    }

    #[test]
    fn resources_reject_a_name_used_as_two_kinds() {
        let e = Resources::parse("cpus:2;cpus:[1-2]").unwrap_err();
        assert_eq!(
            e,
            ResourceError::KindMismatch {
                name: "cpus".into(),
                first: "scalar",
                second: "ranges"
            }
        );
        // Even when one of them is empty.
        assert!(Resources::parse("cpus:0;cpus:{}").is_err());
    }

    #[test]
    fn resources_errors_name_the_offending_text() {
        let msg = |t: &str| Resources::parse(t).unwrap_err().to_string();
        assert_eq!(
            msg("cpus:1.2345"),
            "invalid scalar \"1.2345\" for cpus: at most 3 decimal places"
        );
        assert_eq!(
            msg("cpus:-1"),
            "invalid scalar \"-1\" for cpus: must not be negative"
        );
        assert_eq!(
            msg("cpus:NaN"),
            "invalid scalar \"NaN\" for cpus: expected a decimal number such as 2 or 0.25"
        );
        assert_eq!(
            msg("cpus2"),
            "missing \":\" in \"cpus2\": expected name:value, e.g. cpus:2"
        );
        assert!(msg("c pu:2").contains("invalid resource name \"c pu\""));
        assert!(msg("c(pu:2").contains("invalid reservation in \"c(pu:2\""));
        assert!(msg("ports:[2-1]").contains("invalid ranges \"[2-1]\" for ports"));
        assert!(msg("ports:[1-2").contains("invalid ranges \"[1-2\" for ports"));
        assert!(msg("z:{a b}").contains("invalid set \"{a b}\" for z"));
        assert!(msg("z:{a,}").contains("invalid set"));
        assert!(msg("cpus:").contains("invalid scalar \"\" for cpus"));
        assert!(msg("m:9223372036854775;m:1").contains("adds up to more than"));
    }

    #[test]
    fn resources_contain_and_subtract() {
        let agent = res("cpus:4;mem:1024;ports:[31000-31999]");
        let task = res("cpus:0.5;mem:128;ports:[31000-31001]");
        assert!(agent.contains(&task));
        assert_eq!(
            agent.checked_sub(&task).unwrap(),
            res("cpus:3.5;mem:896;ports:[31002-31999]")
        );
        assert!(!task.contains(&agent));
        assert_eq!(task.checked_sub(&agent), None);
        assert!(!agent.contains(&res("gpus:1")));
        assert!(agent.contains(&Resources::new()));
        assert_eq!(agent.checked_sub(&agent), Some(Resources::new()));
    }

    #[test]
    fn resources_of_different_kinds_do_not_contain_each_other() {
        let a = res("x:[1-5]");
        let b = res("x:1");
        assert!(!a.contains(&b));
        assert_eq!(a.checked_sub(&b), None);
        assert_eq!(a.add(&b), a);
        assert!(a.try_add(&b).is_err());
    }

    #[test]
    fn resources_take_the_lowest_free_ports() {
        let r = res("ports:[31000-31001,32000-32010]");
        assert_eq!(r.take_ports(3), Some(vec![31000, 31001, 32000]));
        assert_eq!(r.take_ports(14), None);
        assert_eq!(r.take_ports(usize::MAX), None);
        assert_eq!(res("cpus:1").take_ports(1), None);
        assert_eq!(res("cpus:1").take_ports(0), Some(vec![]));
    }

    #[test]
    fn resources_builders_replace_values_and_drop_empty_ones() {
        let r = Resources::new()
            .with_scalar(CPUS, sc("1"))
            .with_scalar(MEM, sc("64"))
            .with_scalar(DISK, Scalar::ZERO)
            .with_ranges(PORTS, Ranges::from_values([5, 6, 9]));
        assert_eq!(r.to_string(), "cpus:1;mem:64;ports:[5-6,9-9]");
        assert_eq!(
            r.with_scalar(CPUS, Scalar::ZERO).to_string(),
            "mem:64;ports:[5-6,9-9]"
        );
    }

    #[test]
    fn resources_serialize_as_their_text() {
        let r = res("mem:1024;cpus:2");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"cpus:2;mem:1024\"");
        assert_eq!(serde_json::from_str::<Resources>(&json).unwrap(), r);
        assert!(serde_json::from_str::<Resources>("\"cpus:x\"").is_err());
        assert_eq!(
            "cpus:2".parse::<Resources>().unwrap(),
            Resources::new().with_scalar(CPUS, Scalar::from_units(2))
        );
    }

    // --- Reservations ---

    #[test]
    fn reservations_parse_as_their_own_entries_and_star_means_unreserved() {
        let r = res("cpus(eng):2;cpus:1;mem(eng/web):512;cpus(*):1");
        assert_eq!(r.to_string(), "cpus:2;cpus(eng):2;mem(eng/web):512");
        assert_eq!(r.cpus(), Scalar::from_units(4));
        assert_eq!(r.scalar(CPUS), Scalar::from_units(2));
        assert_eq!(r.scalar("cpus(eng)"), Scalar::from_units(2));
        assert_eq!(r.mem(), Scalar::from_units(512));
        assert!(r.has_reservations());
        assert!(!res("cpus:1").has_reservations());
    }

    #[test]
    fn a_malformed_reservation_is_refused_with_its_reason() {
        for bad in [
            "cpus(eng:1",
            "cpus():1",
            "cpus(weight):1",
            "cpus(eng)x:1",
            "cpus(a b):1",
        ] {
            let err = Resources::parse(bad).unwrap_err();
            assert!(
                matches!(err, ResourceError::InvalidReservation { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("name(role):value"), "{err}");
        }
        assert!(matches!(
            Resources::parse("ports:[1-2];ports(eng):3"),
            Err(ResourceError::KindMismatch { .. })
        ));
    }

    #[test]
    fn a_role_may_use_unreserved_resources_and_those_reserved_for_it_or_above_it() {
        let r = res("cpus:1;cpus(eng):2;cpus(eng/web):3;cpus(ops):4;cpus(engine):5");
        assert_eq!(
            r.usable_by("eng/web"),
            res("cpus:1;cpus(eng):2;cpus(eng/web):3")
        );
        assert_eq!(r.usable_by("eng"), res("cpus:1;cpus(eng):2"));
        assert_eq!(r.usable_by("*"), res("cpus:1"));
        assert_eq!(r.reserved_within("eng"), res("cpus(eng):2;cpus(eng/web):3"));
        assert_eq!(r.unreserved(), res("cpus:1"));
        assert_eq!(*r.flatten(), res("cpus:15"));
    }

    #[test]
    fn reserving_relabels_every_amount_and_star_gives_them_back() {
        let r = res("cpus:1;cpus(ops):1;ports:[10-11]");
        assert_eq!(r.reserved_for("eng"), res("cpus(eng):2;ports(eng):[10-11]"));
        assert_eq!(r.reserved_for("*"), res("cpus:2;ports:[10-11]"));
    }

    #[test]
    fn a_tally_takes_back_exactly_what_was_added_keeping_values_others_still_hold() {
        let a = res("cpus:2;mem:100;ports:[31000-31009];zones:{a}");
        let b = res("cpus:1;ports:[31000-31004,32000-32000];zones:{a,b}");
        let mut t = Tally::default();
        t.add(&a);
        t.add(&b);
        assert_eq!(t.sum(), a.add(&b));
        t.remove(&a);
        assert_eq!(t.sum(), b, "the ports and zone b also held stay");
        t.remove(&b);
        assert_eq!(t.sum(), Resources::new());
        assert_eq!(t, Tally::default(), "nothing left behind");
    }

    #[test]
    fn scalar_sums_add_and_take_back_scalars_only_and_keep_no_zero() {
        let mut sum = res("cpus:1");
        sum.add_scalars(&res("cpus:2;mem:100;cpus(eng):1;ports:[1-5];zones:{a}"));
        assert_eq!(sum, res("cpus:3;mem:100;cpus(eng):1"));
        sum.sub_scalars(&res("cpus:1;mem:100;cpus(eng):4;ports:[1-5]"));
        assert_eq!(sum, res("cpus:2"), "mem and cpus(eng) are gone, not zero");
        assert_eq!(sum.to_string(), "cpus:2");
    }

    #[test]
    fn saturating_subtraction_stops_at_nothing_and_join_takes_the_larger() {
        let a = res("cpus:2;mem:100;ports:[1-5]");
        assert_eq!(
            a.saturating_sub(&res("cpus:3;mem:40;ports:[4-9];gpus:1")),
            res("mem:60;ports:[1-3]")
        );
        assert_eq!(
            a.join(&res("cpus:1;mem:200;ports:[8-9];gpus:1")),
            res("cpus:2;mem:200;ports:[1-5,8-9];gpus:1")
        );
    }

    #[test]
    fn drawing_takes_the_most_specific_reservation_first_then_unreserved() {
        let offer = res("cpus:1;cpus(eng):2;cpus(eng/web):1;mem:100;ports:[5-6];ports(eng):[7-7]");
        assert_eq!(
            offer.draw(&res("cpus:3;mem:50;ports:[6-7]")),
            Some(res(
                "cpus(eng/web):1;cpus(eng):2;mem:50;ports:[6-6];ports(eng):[7-7]"
            ))
        );
        assert_eq!(offer.draw(&res("cpus:4.5")), None);
        assert_eq!(offer.draw(&res("ports:[8-8]")), None);
        assert_eq!(offer.take_ports(3), Some(vec![5, 6, 7]));
    }

    // --- Properties ---

    fn arb_ranges() -> impl Strategy<Value = Ranges> {
        let near_max = (0u64..4, 0u64..4).prop_map(|(a, len)| {
            let lo = u64::MAX - a - len;
            lo..=lo + len
        });
        let small = (0u64..200, 0u64..20).prop_map(|(lo, len)| lo..=lo + len);
        prop::collection::vec(prop_oneof![4 => small, 1 => near_max], 0..6)
            .prop_map(|v| v.into_iter().collect())
    }

    fn arb_resources() -> impl Strategy<Value = Resources> {
        let scalar = || (0i64..2_000_000_000).prop_map(Scalar::from_milli);
        let set = prop::collection::btree_set(prop::sample::select(vec!["a", "b", "c", "d"]), 0..4)
            .prop_map(|s| s.into_iter().map(String::from).collect::<BTreeSet<_>>());
        (scalar(), scalar(), scalar(), arb_ranges(), set).prop_map(|(c, m, g, p, z)| {
            Resources::new()
                .with_scalar(CPUS, c)
                .with_scalar(MEM, m)
                .with_scalar("gpus", g)
                .with_ranges(PORTS, p)
                .with_value("zones", Value::Set(z))
        })
    }

    /// `b` without whatever ranges and set items `a` holds, so the two do not overlap.
    fn disjoint_from(a: &Resources, b: &Resources) -> Resources {
        let mut out = b.clone();
        for (name, value) in b.iter() {
            let trimmed = match (a.get(name), value) {
                (Some(Value::Ranges(x)), Value::Ranges(y)) => Value::Ranges(y.difference(x)),
                (Some(Value::Set(x)), Value::Set(y)) => {
                    Value::Set(y.difference(x).cloned().collect())
                }
                _ => continue,
            };
            out = out.with_value(name, trimmed);
        }
        out
    }

    #[derive(Debug, Clone)]
    enum RangeOp {
        Add(Ranges),
        Sub(Ranges),
    }

    proptest! {
        #[test]
        fn prop_addition_is_commutative(a in arb_resources(), b in arb_resources()) {
            prop_assert_eq!(a.add(&b), b.add(&a));
        }

        #[test]
        fn prop_addition_is_associative(
            a in arb_resources(), b in arb_resources(), c in arb_resources()
        ) {
            prop_assert_eq!(a.add(&b).add(&c), a.add(&b.add(&c)));
        }

        #[test]
        fn prop_subtracting_what_was_added_gives_back_the_original(
            a in arb_resources(), b in arb_resources()
        ) {
            let b = disjoint_from(&a, &b);
            prop_assert_eq!(a.add(&b).checked_sub(&b), Some(a));
        }

        #[test]
        fn prop_a_contains_a_plus_b_only_when_b_is_empty(
            a in arb_resources(), b in arb_resources()
        ) {
            let b = disjoint_from(&a, &b);
            prop_assert_eq!(a.contains(&a.add(&b)), b.is_empty());
            prop_assert!(a.add(&b).contains(&a));
        }

        #[test]
        fn prop_display_parses_back_to_the_same_resources(a in arb_resources()) {
            prop_assert_eq!(Resources::parse(&a.to_string()).unwrap(), a.clone());
            let json = serde_json::to_string(&a).unwrap();
            prop_assert_eq!(serde_json::from_str::<Resources>(&json).unwrap(), a);
        }

        #[test]
        fn prop_drawing_takes_exactly_what_is_asked_from_what_is_held(
            a in arb_resources(), b in arb_resources(), c in arb_resources(), want in arb_resources()
        ) {
            let held = a.add(&disjoint_from(&a, &b).reserved_for("eng"))
                .add(&disjoint_from(&a.add(&b), &c).reserved_for("eng/web"));
            let drawn = held.draw(&want);
            prop_assert_eq!(drawn.is_some(), held.flatten().contains(&want));
            if let Some(d) = drawn {
                prop_assert!(held.contains(&d));
                prop_assert_eq!(d.flatten().into_owned(), want);
                let rest = held.checked_sub(&d).unwrap();
                prop_assert_eq!(rest.add(&d), held);
            }
        }

        #[test]
        fn prop_reserved_resources_display_and_parse_back(a in arb_resources(), b in arb_resources()) {
            let r = a.add(&disjoint_from(&a, &b).reserved_for("eng/web"));
            prop_assert_eq!(Resources::parse(&r.to_string()).unwrap(), r);
        }

        #[test]
        fn prop_scalar_display_parses_back(milli in 0i64..=i64::MAX) {
            let s = Scalar::from_milli(milli);
            prop_assert_eq!(s.to_string().parse::<Scalar>().unwrap(), s);
        }

        #[test]
        fn prop_scalar_tenths_sum_exactly(tenths in prop::collection::vec(0i64..1000, 0..50)) {
            let sum: Scalar = tenths.iter().map(|t| format!("{}.{}", t / 10, t % 10).parse::<Scalar>().unwrap()).sum();
            prop_assert_eq!(sum.milli(), tenths.iter().sum::<i64>() * 100);
        }

        #[test]
        fn prop_ranges_stay_normalized_under_any_add_and_sub(
            start in arb_ranges(),
            ops in prop::collection::vec(
                prop_oneof![arb_ranges().prop_map(RangeOp::Add), arb_ranges().prop_map(RangeOp::Sub)],
                0..12,
            )
        ) {
            let mut r = start;
            prop_assert!(r.is_normalized());
            for op in ops {
                let before = r.clone();
                r = match &op {
                    RangeOp::Add(o) => r.add(o),
                    RangeOp::Sub(o) => r.difference(o),
                };
                prop_assert!(r.is_normalized(), "{:?} after {:?}", r, op);
                // Against a per-value model, on the small values we can enumerate.
                for v in (0..250).chain(u64::MAX - 10..=u64::MAX) {
                    let expected = match &op {
                        RangeOp::Add(o) => before.contains_value(v) || o.contains_value(v),
                        RangeOp::Sub(o) => before.contains_value(v) && !o.contains_value(v),
                    };
                    prop_assert_eq!(r.contains_value(v), expected, "value {}", v);
                }
            }
        }

        #[test]
        fn prop_parsing_arbitrary_text_never_panics(text in ".*") {
            let _ = Resources::parse(&text);
            let _ = text.parse::<Scalar>();
            let _ = text.parse::<Ranges>();
        }

        #[test]
        fn prop_parsing_resource_like_text_never_panics(
            text in "[a-z:;\\[\\]{},0-9.\\- ]{0,40}"
        ) {
            if let Ok(r) = Resources::parse(&text) {
                prop_assert_eq!(Resources::parse(&r.to_string()).unwrap(), r);
            }
        }
    }
}
