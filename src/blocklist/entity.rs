//! Blockable entities, parsed once at the edge into their canonical form.
//!
//! An IPv4 address written in IPv6's mapped form (`::ffff:198.51.100.1`) is
//! the IPv4 address: daemons on dual-stack sockets log it that way, and a
//! block stored under the mapped spelling would never match the IPv4 client.
//! IPv6 is written compressed and lower-case (RFC 5952), which is what the
//! standard library's formatting produces.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// What kind of thing a block applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntityType {
    Ip,
    Cidr,
    User,
    ApiKey,
}

impl EntityType {
    pub const ALL: [EntityType; 4] = [
        EntityType::Ip,
        EntityType::Cidr,
        EntityType::User,
        EntityType::ApiKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::Ip => "ip",
            EntityType::Cidr => "cidr",
            EntityType::User => "user",
            EntityType::ApiKey => "api_key",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// Parses an address, folding IPv4-mapped IPv6 into IPv4. Anything beside
/// the address (brackets, a port, a zone, words) is refused rather than
/// trimmed, so a block never lands on a truncated address.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let address: IpAddr = text
        .parse()
        .map_err(|_| format!("`{text}` is not an IPv4 or IPv6 address"))?;
    Ok(canonical_ip(address))
}

/// Folds IPv4-mapped IPv6 addresses into IPv4.
pub fn canonical_ip(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A network: an address with a prefix length and no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `address/prefix`. A bare address is the network of just that
    /// address when `allow_bare` is set (allowlist entries), else refused.
    /// Host bits set is an error that names the canonical network.
    pub fn parse(text: &str, allow_bare: bool) -> Result<Self, String> {
        let (address_text, prefix_text) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None if allow_bare => (text, None),
            None => return Err(format!("`{text}` is not a network: write ADDRESS/PREFIX")),
        };
        let written: IpAddr = address_text.parse().map_err(|_| {
            format!("`{text}` is not a network: `{address_text}` is not an address")
        })?;
        let full = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => full,
            Some(digits) => digits
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= full && digits.chars().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| format!("`{text}` has a prefix length outside 0..={full}"))?,
        };
        let (address, prefix) = fold_mapped_network(written, prefix, text)?;

        let network = Self {
            address: mask(address, prefix),
            prefix,
        };
        if network.address != address {
            return Err(format!(
                "`{text}` has host bits set; the network is {network}"
            ));
        }
        Ok(network)
    }

    /// The network holding exactly one address.
    pub fn host(address: IpAddr) -> Self {
        let address = canonical_ip(address);
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        Self { address, prefix }
    }

    /// 4 or 6.
    pub fn family(&self) -> i64 {
        if self.address.is_ipv4() {
            4
        } else {
            6
        }
    }

    /// First and last address as integers.
    pub fn range(&self) -> (u128, u128) {
        let bits = if self.address.is_ipv4() { 32 } else { 128 };
        let start = to_u128(self.address);
        let span = if self.prefix == 0 && bits == 128 {
            u128::MAX
        } else {
            (1u128 << (bits - self.prefix as u32)) - 1
        };
        (start, start + span)
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical_ip(address);
        let (start, end) = self.range();
        address.is_ipv4() == self.address.is_ipv4() && (start..=end).contains(&to_u128(address))
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Network) -> bool {
        let (start, end) = self.range();
        let (other_start, other_end) = other.range();
        self.family() == other.family() && start <= other_end && other_start <= end
    }
}

impl fmt::Display for Network {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.address, self.prefix)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Network::parse(&text, true).map_err(de::Error::custom)
    }
}

/// `::ffff:a.b.c.d/p` with p ≥ 96 is the IPv4 network `a.b.c.d/(p-96)`.
fn fold_mapped_network(address: IpAddr, prefix: u8, text: &str) -> Result<(IpAddr, u8), String> {
    let IpAddr::V6(v6) = address else {
        return Ok((address, prefix));
    };
    match v6.to_ipv4_mapped() {
        Some(v4) if prefix >= 96 => Ok((IpAddr::V4(v4), prefix - 96)),
        Some(_) => Err(format!(
            "`{text}` mixes IPv4-mapped and other IPv6 addresses; use a prefix of 96 or more"
        )),
        None => Ok((address, prefix)),
    }
}

fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

fn to_u128(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Renders a range boundary as fixed-width hex, so that text comparison in
/// SQL orders boundaries like numbers.
pub fn range_key(value: u128) -> String {
    format!("{value:032x}")
}

/// A blockable entity in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    Ip(IpAddr),
    Cidr(Network),
    User(String),
    ApiKey(String),
}

impl Entity {
    /// Parses `value` as the entity of a new block, which must also hold no
    /// text direction controls in a user name or API key (see
    /// [`crate::http::is_direction_control`]). Kept out of [`Entity::parse`],
    /// which also reads stored blocks and requests to unblock: a block
    /// written before this rule must still be found, enforced and lifted.
    pub fn parse_new(entity_type: EntityType, value: &str) -> Result<Self, String> {
        let entity = Self::parse(entity_type, value)?;
        if let Entity::User(name) | Entity::ApiKey(name) = &entity {
            if name.chars().any(crate::http::is_direction_control) {
                return Err("must not contain text direction controls (U+202A-U+202E, \
                     U+2066-U+2069), which make a name display as another"
                    .to_string());
            }
        }
        Ok(entity)
    }

    /// Parses `value` as an entity of `entity_type`.
    pub fn parse(entity_type: EntityType, value: &str) -> Result<Self, String> {
        match entity_type {
            EntityType::Ip => parse_ip(value).map(Entity::Ip),
            EntityType::Cidr => Network::parse(value, false).map(Entity::Cidr),
            EntityType::User => parse_name(value).map(Entity::User),
            EntityType::ApiKey => parse_name(value).map(Entity::ApiKey),
        }
    }

    pub fn entity_type(&self) -> EntityType {
        match self {
            Entity::Ip(_) => EntityType::Ip,
            Entity::Cidr(_) => EntityType::Cidr,
            Entity::User(_) => EntityType::User,
            Entity::ApiKey(_) => EntityType::ApiKey,
        }
    }

    /// The canonical value stored and returned.
    pub fn value(&self) -> String {
        match self {
            Entity::Ip(address) => address.to_string(),
            Entity::Cidr(network) => network.to_string(),
            Entity::User(name) | Entity::ApiKey(name) => name.clone(),
        }
    }

    /// The addresses an `ip` or `cidr` entity covers.
    pub fn network(&self) -> Option<Network> {
        match self {
            Entity::Ip(address) => Some(Network::host(*address)),
            Entity::Cidr(network) => Some(*network),
            Entity::User(_) | Entity::ApiKey(_) => None,
        }
    }
}

/// User names and API keys: non-empty, at most 256 characters, no control
/// characters, no surrounding whitespace (which would make two spellings of
/// one entity).
fn parse_name(value: &str) -> Result<String, String> {
    if value.is_empty() || value.chars().count() > 256 {
        return Err("must be 1 to 256 characters".to_string());
    }
    if value.chars().any(char::is_control) || value.trim() != value {
        return Err("must not contain control characters or surrounding whitespace".to_string());
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> String {
        parse_ip(text)
            .map(|address| address.to_string())
            .unwrap_or_else(|error| error)
    }

    #[test]
    fn addresses_are_written_canonically() {
        assert_eq!(ip("::ffff:203.0.113.9"), "203.0.113.9");
        assert_eq!(ip("0:0:0:0:0:ffff:cb00:7109"), "203.0.113.9");
        assert_eq!(ip("2001:0DB8:0000:0000:0000:0000:0000:0001"), "2001:db8::1");
    }

    #[test]
    fn addresses_with_ports_or_words_are_refused() {
        assert!(parse_ip("[2001:db8::1]:22").is_err());
        assert!(parse_ip("2001:db8::1:1 port 60910").is_err());
        assert!(parse_ip("198.51.100.1:22").is_err());
        assert!(parse_ip(" 198.51.100.1").is_err());
        assert!(parse_ip("fe80::1%eth0").is_err());
    }

    #[test]
    fn networks_with_host_bits_name_the_canonical_network() {
        let error = Network::parse("2001:DB8:1837:5B00::1/56", false).unwrap_err();
        assert!(error.contains("2001:db8:1837:5b00::/56"), "{error}");
        let error = Network::parse("198.51.100.7/24", false).unwrap_err();
        assert!(error.contains("198.51.100.0/24"), "{error}");
    }

    #[test]
    fn networks_without_double_colon_are_refused() {
        assert!(Network::parse("2001:db8:1837:5b00/56", true).is_err());
        assert!(Network::parse("fe80/16", true).is_err());
    }

    #[test]
    fn mapped_networks_fold_into_ipv4() {
        let network = Network::parse("::ffff:203.0.113.0/120", false).unwrap();
        assert_eq!(network.to_string(), "203.0.113.0/24");
        assert!(Network::parse("::ffff:0:0/90", false).is_err());
    }

    #[test]
    fn containment_and_overlap_follow_the_ranges() {
        let everything = Network::parse("0.0.0.0/0", false).unwrap();
        let loopback = Network::parse("127.0.0.0/8", false).unwrap();
        assert!(everything.overlaps(&loopback));
        assert!(loopback.contains("127.1.2.3".parse().unwrap()));
        assert!(!loopback.contains("::1".parse().unwrap()));
        let all_v6 = Network::parse("::/0", false).unwrap();
        assert_eq!(all_v6.range(), (0, u128::MAX));
        assert!(all_v6.overlaps(&Network::host("::1".parse().unwrap())));
    }

    #[test]
    fn prefix_lengths_are_bounded_and_numeric() {
        assert!(Network::parse("10.0.0.0/33", false).is_err());
        assert!(Network::parse("10.0.0.0/+8", false).is_err());
        assert!(Network::parse("10.0.0.0/", false).is_err());
        assert!(Network::parse("10.0.0.0", false).is_err());
        assert_eq!(
            Network::parse("10.0.0.1", true).unwrap().to_string(),
            "10.0.0.1/32"
        );
    }
}
