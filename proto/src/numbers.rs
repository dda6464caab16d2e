//! IANA registries used by IKEv2 (RFC 7296 section 3, IANA "IKEv2 Parameters").
//!
//! Every registry is a newtype over its wire integer with named constants, so
//! that a value this crate does not know still parses and re-encodes
//! unchanged (the rustls pattern). `Display` prints the IANA name where one is
//! known and the number otherwise.

use core::fmt;

macro_rules! registry {
    (
        $(#[$meta:meta])*
        $name:ident($int:ty) {
            $( $(#[$cmeta:meta])* $cname:ident = $value:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub $int);

        impl $name {
            $( $(#[$cmeta])* pub const $cname: $name = $name($value); )*

            /// The IANA name of this value, if this crate knows it.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($cname)), )*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl From<$int> for $name {
            fn from(v: $int) -> Self {
                $name(v)
            }
        }
    };
}

registry! {
    /// Exchange Type (RFC 7296 3.1).
    ExchangeType(u8) {
        IKE_SA_INIT = 34,
        IKE_AUTH = 35,
        CREATE_CHILD_SA = 36,
        INFORMATIONAL = 37,
    }
}

registry! {
    /// Next Payload / payload type (RFC 7296 3.2).
    PayloadType(u8) {
        NONE = 0,
        SA = 33,
        KE = 34,
        IDI = 35,
        IDR = 36,
        CERT = 37,
        CERTREQ = 38,
        AUTH = 39,
        NONCE = 40,
        NOTIFY = 41,
        DELETE = 42,
        VENDOR_ID = 43,
        TSI = 44,
        TSR = 45,
        SK = 46,
        CP = 47,
        EAP = 48,
        /// Encrypted Fragment (RFC 7383 2.5).
        SKF = 53,
    }
}

registry! {
    /// Security Protocol Identifier (RFC 7296 3.3.1). 201-255 are private use;
    /// aokd uses [`ProtocolId::TCP_AO`] for its TCP-AO child SAs.
    ProtocolId(u8) {
        NONE = 0,
        IKE = 1,
        AH = 2,
        ESP = 3,
        /// Private use: a TCP-AO Master Key Tuple (docs/protocol.md).
        TCP_AO = 201,
    }
}

registry! {
    /// Transform Type (RFC 7296 3.3.2).
    TransformType(u8) {
        ENCR = 1,
        PRF = 2,
        INTEG = 3,
        KE = 4,
        ESN = 5,
    }
}

registry! {
    /// Transform type 1 IDs (encryption algorithms).
    EncrId(u16) {
        ENCR_AES_CBC = 12,
        ENCR_AES_GCM_8 = 18,
        ENCR_AES_GCM_12 = 19,
        ENCR_AES_GCM_16 = 20,
        ENCR_CHACHA20_POLY1305 = 28,
    }
}

registry! {
    /// Transform type 2 IDs (pseudorandom functions).
    PrfId(u16) {
        PRF_HMAC_SHA1 = 2,
        PRF_AES128_XCBC = 4,
        PRF_HMAC_SHA2_256 = 5,
        PRF_HMAC_SHA2_384 = 6,
        PRF_HMAC_SHA2_512 = 7,
        PRF_AES128_CMAC = 8,
    }
}

registry! {
    /// Transform type 3 IDs (integrity algorithms). In a TCP-AO child SA these
    /// name the TCP-AO MAC (docs/protocol.md).
    IntegId(u16) {
        NONE = 0,
        AUTH_HMAC_SHA1_96 = 2,
        AUTH_AES_XCBC_96 = 5,
        AUTH_AES_CMAC_96 = 8,
        AUTH_HMAC_SHA2_256_128 = 12,
        AUTH_HMAC_SHA2_384_192 = 13,
        AUTH_HMAC_SHA2_512_256 = 14,
    }
}

registry! {
    /// Transform type 4 IDs (key exchange methods / Diffie-Hellman groups).
    DhGroup(u16) {
        NONE = 0,
        MODP_2048 = 14,
        ECP_256 = 19,
        ECP_384 = 20,
        CURVE25519 = 31,
    }
}

registry! {
    /// Authentication Method (RFC 7296 3.8).
    AuthMethod(u8) {
        RSA_SIG = 1,
        SHARED_KEY_MIC = 2,
        DSS_SIG = 3,
        /// RFC 4754: ECDSA with SHA-256 on P-256, r | s.
        ECDSA_SHA256_P256 = 9,
        /// RFC 4754: ECDSA with SHA-384 on P-384, r | s.
        ECDSA_SHA384_P384 = 10,
        /// RFC 4754: ECDSA with SHA-512 on P-521 (not accepted).
        ECDSA_SHA512_P521 = 11,
        /// RFC 7427: AlgorithmIdentifier and signature.
        DIGITAL_SIGNATURE = 14,
    }
}

registry! {
    /// Identification type (RFC 7296 3.5).
    IdType(u8) {
        ID_IPV4_ADDR = 1,
        ID_FQDN = 2,
        ID_RFC822_ADDR = 3,
        ID_IPV6_ADDR = 5,
        ID_DER_ASN1_DN = 9,
        ID_KEY_ID = 11,
    }
}

registry! {
    /// Certificate Encoding of CERT and CERTREQ payloads (RFC 7296 3.6).
    CertEncoding(u8) {
        /// A DER X.509 certificate; in CERTREQ, SHA-1 hashes of CA public keys.
        X509_SIGNATURE = 4,
    }
}

registry! {
    /// Traffic selector type (RFC 7296 3.13.1).
    TsType(u8) {
        TS_IPV4_ADDR_RANGE = 7,
        TS_IPV6_ADDR_RANGE = 8,
    }
}

registry! {
    /// Notify Message Type (RFC 7296 3.10.1). Values below 16384 are errors.
    NotifyType(u16) {
        UNSUPPORTED_CRITICAL_PAYLOAD = 1,
        INVALID_IKE_SPI = 4,
        INVALID_MAJOR_VERSION = 5,
        INVALID_SYNTAX = 7,
        INVALID_MESSAGE_ID = 9,
        INVALID_SPI = 11,
        NO_PROPOSAL_CHOSEN = 14,
        INVALID_KE_PAYLOAD = 17,
        AUTHENTICATION_FAILED = 24,
        SINGLE_PAIR_REQUIRED = 34,
        NO_ADDITIONAL_SAS = 35,
        TS_UNACCEPTABLE = 38,
        INVALID_SELECTORS = 39,
        TEMPORARY_FAILURE = 43,
        CHILD_SA_NOT_FOUND = 44,
        INITIAL_CONTACT = 16384,
        SET_WINDOW_SIZE = 16385,
        NAT_DETECTION_SOURCE_IP = 16388,
        NAT_DETECTION_DESTINATION_IP = 16389,
        COOKIE = 16390,
        REKEY_SA = 16393,
        /// RFC 6023: the sender can establish an IKE SA without a child SA.
        CHILDLESS_IKEV2_SUPPORTED = 16418,
        /// RFC 7383 2.3: the sender reassembles Encrypted Fragment payloads.
        IKEV2_FRAGMENTATION_SUPPORTED = 16430,
        /// RFC 7427 4: the hashes the sender accepts in signatures.
        SIGNATURE_HASH_ALGORITHMS = 16431,
        /// Private status (docs/protocol.md): the sender negotiates TCP-AO MKTs.
        TCP_AO_SUPPORTED = 47_000,
        /// Private status (docs/protocol.md): exclude TCP options from the MAC.
        TCP_AO_EXCLUDE_OPTIONS = 47_001,
    }
}

impl NotifyType {
    /// True for error types (RFC 7296 3.10.1: values below 16384).
    pub fn is_error(self) -> bool {
        self.0 < 16384
    }
}

/// Transform attribute type for the key length (RFC 7296 3.3.5, TV format).
pub const ATTR_KEY_LENGTH: u16 = 14;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_values_survive_and_print_numerically() {
        let t = NotifyType(12345);
        assert_eq!(t.name(), None);
        assert_eq!(t.to_string(), "NotifyType(12345)");
        assert_eq!(NotifyType::from(24), NotifyType::AUTHENTICATION_FAILED);
        assert_eq!(
            NotifyType::AUTHENTICATION_FAILED.to_string(),
            "AUTHENTICATION_FAILED"
        );
        assert!(NotifyType::NO_PROPOSAL_CHOSEN.is_error());
        assert!(!NotifyType::TCP_AO_SUPPORTED.is_error());
    }
}
