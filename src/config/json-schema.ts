import { z } from 'zod';
import { ConfigFileSchema } from './schema.js';

/** Where the generated schema is kept, relative to the package root; example configs point editors at it. */
export const CONFIG_JSON_SCHEMA_FILE = 'schemas/config.schema.json';

/**
 * JSON Schema (draft-07, the dialect editors support best) of the config file
 * as a user writes it: defaults make fields optional, and `${VAR}` references
 * are only valid where a string is expected.
 */
export function configJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(ConfigFileSchema, { io: 'input', target: 'draft-7' });
  return {
    ...schema,
    $id: 'https://github.com/linewatch/linewatch/schemas/config.schema.json',
    title: 'linewatch agent configuration',
    description: 'The YAML file passed to `linewatch run --config`. Check one with `linewatch validate-config <file>`.',
  };
}

export function configJsonSchemaText(): string {
  return `${JSON.stringify(configJsonSchema(), null, 2)}\n`;
}
