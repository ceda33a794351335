//! Column values back into SDK types, shared by both backends. A value that
//! does not decode is [`StorageError::Corrupt`] naming its table.

use hush::keys::{
    DeviceAddress, DeviceAuthKey, DeviceCertificate, DeviceId, IdentityKey, OneTimePreKey,
    PreKeyId, SignedPqPreKey, SignedPreKey, UserId, X25519PublicKey,
};
use hush::wire::envelope::Envelope;
use hush::wire::protocol::{BlobId, EnvelopeId};

use super::StorageError;

/// The table a value came from, for [`StorageError::Corrupt`].
pub(super) type Table = &'static str;

pub(super) fn user(bytes: Vec<u8>, table: Table) -> Result<UserId, StorageError> {
    let text = String::from_utf8(bytes).map_err(|_| StorageError::Corrupt(table))?;
    UserId::new(text).map_err(|_| StorageError::Corrupt(table))
}

pub(super) fn device_id<T: TryInto<u32>>(value: T, table: Table) -> Result<DeviceId, StorageError> {
    value
        .try_into()
        .map(DeviceId)
        .map_err(|_| StorageError::Corrupt(table))
}

pub(super) fn address<T: TryInto<u32>>(
    user_bytes: Vec<u8>,
    device: T,
    table: Table,
) -> Result<DeviceAddress, StorageError> {
    Ok(DeviceAddress::new(
        user(user_bytes, table)?,
        device_id(device, table)?,
    ))
}

pub(super) fn array<const N: usize>(bytes: &[u8], table: Table) -> Result<[u8; N], StorageError> {
    bytes.try_into().map_err(|_| StorageError::Corrupt(table))
}

pub(super) fn identity(bytes: &[u8], table: Table) -> Result<IdentityKey, StorageError> {
    IdentityKey::from_bytes(&array(bytes, table)?).map_err(|_| StorageError::Corrupt(table))
}

pub(super) fn auth_key(bytes: &[u8], table: Table) -> Result<DeviceAuthKey, StorageError> {
    DeviceAuthKey::from_bytes(&array(bytes, table)?).map_err(|_| StorageError::Corrupt(table))
}

pub(super) fn certificate(
    bytes: Option<&[u8]>,
    table: Table,
) -> Result<Option<DeviceCertificate>, StorageError> {
    bytes
        .map(|b| DeviceCertificate::from_bytes(b).map_err(|_| StorageError::Corrupt(table)))
        .transpose()
}

pub(super) fn signed_prekey(bytes: &[u8], table: Table) -> Result<SignedPreKey, StorageError> {
    SignedPreKey::from_bytes(bytes).map_err(|_| StorageError::Corrupt(table))
}

pub(super) fn pq_prekey(bytes: &[u8], table: Table) -> Result<SignedPqPreKey, StorageError> {
    SignedPqPreKey::from_bytes(bytes).map_err(|_| StorageError::Corrupt(table))
}

pub(super) fn one_time_prekey<T: TryInto<u32>>(
    id: T,
    key: &[u8],
    table: Table,
) -> Result<OneTimePreKey, StorageError> {
    let id = id.try_into().map_err(|_| StorageError::Corrupt(table))?;
    let key = X25519PublicKey::from_bytes(&array(key, table)?)
        .map_err(|_| StorageError::Corrupt(table))?;
    Ok(OneTimePreKey {
        id: PreKeyId(id),
        key,
    })
}

pub(super) fn envelope_id(bytes: &[u8], table: Table) -> Result<EnvelopeId, StorageError> {
    array(bytes, table).map(EnvelopeId)
}

pub(super) fn blob_id(bytes: &[u8], table: Table) -> Result<BlobId, StorageError> {
    array(bytes, table).map(BlobId)
}

pub(super) fn envelope(bytes: &[u8], table: Table) -> Result<Envelope, StorageError> {
    Envelope::from_bytes(bytes).map_err(|_| StorageError::Corrupt(table))
}

pub(super) fn push_token(bytes: Vec<u8>, table: Table) -> Result<String, StorageError> {
    String::from_utf8(bytes).map_err(|_| StorageError::Corrupt(table))
}
