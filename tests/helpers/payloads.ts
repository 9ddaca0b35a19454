import { readFileSync } from 'node:fs';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import { expect } from 'vitest';

/** What a test received over MQTT (ReceivedMessage of mosquitto.ts is one). */
export interface TopicPayload {
  topic: string;
  payload: string;
}

export interface PayloadValidator {
  /** Problems with one message: [] when it matches the schema its topic calls for. */
  problems(message: TopicPayload): string[];
  /** Fails the test naming every received message that breaks its schema (or is on no known topic). */
  expectAllValid(messages: readonly TopicPayload[]): void;
}

// Strict, except that `required` in the event's if/then names properties declared one level up.
const ajv = new Ajv2020({ strict: true, strictRequired: false, allErrors: true });
const compiled = new Map<string, ValidateFunction>();
function schema(name: string): ValidateFunction {
  let validate = compiled.get(name);
  if (!validate) {
    validate = ajv.compile(JSON.parse(readFileSync(new URL(`../../schemas/${name}.schema.json`, import.meta.url), 'utf8')));
    compiled.set(name, validate);
  }
  return validate;
}

/**
 * Validates MQTT payloads against schemas/*.schema.json, picking the schema by
 * topic under `baseTopic` (`linewatch/<deviceId>` by default, `+` matches any device).
 * A message on a topic the agent does not document counts as invalid, so a new
 * topic cannot slip past the schemas.
 */
export function payloadValidator(baseTopic = 'linewatch/+'): PayloadValidator {
  const base = baseTopic.split('/').map((level) => (level === '+' ? '[^/]+' : level.replace(/[.*?^${}()|[\]\\]/g, '\\$&'))).join('/');
  const agentTopic = new RegExp(`^${base}/(status|stats)$`);
  const cameraTopic = new RegExp(`^${base}/[^/]+/(status|events|score|inspections|faults)$`);

  const problems = ({ topic, payload }: TopicPayload): string[] => {
    const agent = agentTopic.exec(topic);
    if (agent?.[1] === 'status') return payload === 'online' || payload === 'offline' ? [] : [`availability must be online or offline, got ${JSON.stringify(payload)}`];
    const name = agent ? 'stats' : { status: 'camera-status', events: 'event', score: 'score', inspections: 'inspection', faults: 'fault' }[cameraTopic.exec(topic)?.[1] ?? ''];
    if (!name) return [`no schema for topic ${topic}`];
    let value: unknown;
    try {
      value = JSON.parse(payload);
    } catch {
      return [`not JSON: ${payload.slice(0, 80)}`];
    }
    const validate = schema(name);
    if (validate(value)) return [];
    return (validate.errors ?? []).map((error) => `${name}${error.instancePath} ${error.message ?? ''} ${JSON.stringify(error.params)}`);
  };

  return {
    problems,
    expectAllValid(messages) {
      const invalid = messages
        .map((message) => ({ message, problems: problems(message) }))
        .filter((checked) => checked.problems.length > 0)
        .map(({ message, problems: found }) => `${message.topic} ${message.payload.slice(0, 300)}\n    ${found.join('\n    ')}`);
      expect(invalid, `${invalid.length} of ${messages.length} payload(s) break their schema`).toEqual([]);
    },
  };
}
