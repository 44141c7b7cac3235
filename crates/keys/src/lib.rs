//! Keys (issue 5): KMS providers (AWS KMS through aws-sdk-kms, a local development
//! provider), envelope encryption of each tenant's DEK under its CMK, and per-boot keys.
//! Not built yet; a placeholder.
