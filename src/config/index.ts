export { ConfigError } from './errors.js';
export { configJsonSchema, configJsonSchemaText, CONFIG_JSON_SCHEMA_FILE } from './json-schema.js';
export { CONFIG_LIMITS, configFromObject, DEFAULT_CONFIG_FILE, deviceIdFromHostname, loadConfig, parseConfig, type ConfigOptions } from './load.js';
export { deepMerge, resolveCameras, type CameraConfig, type Config, type MqttConfig, type TlsConfig } from './resolve.js';
export * from './schema.js';
export { classifySource, sourceKind, type CameraSourceKind, type SourceKind } from './sources.js';
export type { ConfigIssue, Environment } from './substitute.js';
