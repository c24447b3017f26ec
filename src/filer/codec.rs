//! A chunk's stored bytes to its clear bytes (gunzip, AES-GCM), and holes as zeros.

use super::*;

pub(super) async fn send_zeros(
    tx: &mpsc::Sender<Result<Bytes, ReadError>>,
    mut n: u64,
) -> Result<(), ReadError> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        tx.send(Ok(Bytes::from_static(&ZEROS[..k])))
            .await
            .map_err(|_| ReadError::Aborted)?;
        n -= k as u64;
    }
    Ok(())
}

pub(super) fn gunzip(fid: &str, data: &[u8]) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::with_capacity(data.len() * 2);
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| chunk_err(fid, format!("gunzip: {e}"), false))?;
    Ok(out)
}

/// Turn the bytes a volume server returned into the chunk's clear bytes.
pub(super) fn decode_chunk(
    fid: &str,
    body: Bytes,
    gzipped: bool,
    chunk: &FileChunk,
    check_size: bool,
) -> Result<Bytes, ReadError> {
    let mut data = if gzipped {
        Bytes::from(gunzip(fid, &body)?)
    } else {
        body
    };
    if !chunk.cipher_key.is_empty() {
        data = Bytes::from(decrypt(fid, &chunk.cipher_key, &data)?);
        if chunk.is_compressed {
            data = Bytes::from(gunzip(fid, &data)?);
        }
    }
    if check_size && data.len() as u64 != chunk.size {
        // A compressed needle served without Content-Encoding still starts with the gzip magic.
        if data.starts_with(&[0x1f, 0x8b])
            && let Ok(clear) = gunzip(fid, &data)
            && clear.len() as u64 == chunk.size
        {
            return Ok(Bytes::from(clear));
        }
        return Err(chunk_err(
            fid,
            format!("got {} bytes, the entry says {}", data.len(), chunk.size),
            true,
        ));
    }
    Ok(data)
}

/// AES-256-GCM with the 12-byte nonce in front, as the filer writes encrypted chunks.
pub(super) fn decrypt(fid: &str, key: &[u8], data: &[u8]) -> Result<Vec<u8>, ReadError> {
    let cipher = Aes256Gcm::new_from_slice(key)
        .map_err(|_| chunk_err(fid, "cipher key is not 32 bytes", false))?;
    if data.len() < 12 + 16 {
        return Err(chunk_err(
            fid,
            "encrypted chunk shorter than nonce and tag",
            true,
        ));
    }
    let (nonce, sealed) = data.split_at(12);
    let nonce = aes_gcm::Nonce::try_from(nonce).map_err(|_| chunk_err(fid, "bad nonce", false))?;
    cipher
        .decrypt(&nonce, sealed)
        .map_err(|_| chunk_err(fid, "decryption failed (wrong key or corrupt data)", false))
}
