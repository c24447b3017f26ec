//! SeaweedFS file ids: `"<volume id>,<needle key hex><cookie hex>"`.

use crate::pb::FileId;

/// Format a `FileId` the way upstream does: the 8-byte big-endian key with its
/// leading zero bytes removed, then the 4-byte cookie, all lower-case hex.
pub fn format(fid: &FileId) -> String {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&fid.file_key.to_be_bytes());
    bytes[8..].copy_from_slice(&fid.cookie.to_be_bytes());
    let first = bytes[..8].iter().position(|b| *b != 0).unwrap_or(8);
    format!("{},{}", fid.volume_id, hex::encode(&bytes[first..]))
}

/// The volume id part of a file id string (before the last comma).
pub fn volume_id(file_id: &str) -> Option<&str> {
    let (vid, rest) = file_id.rsplit_once(',')?;
    if vid.is_empty()
        || rest.len() <= 8
        || rest.len() > 24
        || !vid.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(vid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_upstream() {
        assert_eq!(
            format(&FileId {
                volume_id: 3,
                file_key: 4,
                cookie: 0x6dbbed8d
            }),
            "3,046dbbed8d"
        );
        assert_eq!(
            format(&FileId {
                volume_id: 1,
                file_key: 0,
                cookie: 1
            }),
            "1,00000001"
        );
        assert_eq!(
            format(&FileId {
                volume_id: 7,
                file_key: 0x0102030405060708,
                cookie: 0xffffffff
            }),
            "7,0102030405060708ffffffff"
        );
    }

    #[test]
    fn parses_volume_ids() {
        assert_eq!(volume_id("3,046dbbed8d"), Some("3"));
        assert_eq!(volume_id("3,6dbbed8d"), None, "needs more than the cookie");
        assert_eq!(volume_id("x,046dbbed8d"), None);
        assert_eq!(volume_id("3,04zz"), None);
        assert_eq!(volume_id("nocomma"), None);
    }
}
