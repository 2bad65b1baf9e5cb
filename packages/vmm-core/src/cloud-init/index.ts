export {
  assertHostname,
  buildNoCloudSeed,
  INSTANCE_ID_PATTERN,
  MAX_USER_DATA_BYTES,
  type MetaDataValue,
  type NoCloudSeedContent,
  type NoCloudSeedSpec,
  readNoCloudSeed,
  renderMetaData,
  SEED_LABEL,
} from './seed.js';
