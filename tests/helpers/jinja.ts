import { spawnSync } from 'node:child_process';

const SYSTEM_PYTHON = '/usr/bin/python3';

/**
 * Renders the few Jinja forms linewatch's Home Assistant templates use, the way
 * Home Assistant would with `value_json` bound to the parsed payload:
 *
 *   text {{ value_json.a.b }} text
 *   {{ value_json.a.split('/') | last }}
 *   {{ 'X' if value_json.a == 'Y' else 'Z' }}
 *
 * Anything else throws, so a template that drifts past what this understands fails
 * its test instead of being half-evaluated. (The templates were also rendered once
 * with Jinja2 3.1's sandboxed environment, which Home Assistant uses, with the same results.)
 */
export function renderTemplate(template: string, payload: string): string {
  const valueJson: unknown = JSON.parse(payload);
  return template.replace(/\{\{(.*?)\}\}/g, (_, expression: string) => String(evaluate(expression.trim(), valueJson)));
}

const STRING = String.raw`'([^']*)'`;
const PATH = String.raw`value_json((?:\.[A-Za-z_][A-Za-z0-9_]*)+)`;
const CONDITIONAL = new RegExp(String.raw`^${STRING}\s+if\s+${PATH}\s*==\s*${STRING}\s+else\s+${STRING}$`);
const SPLIT_LAST = new RegExp(String.raw`^${PATH}\.split\(${STRING}\)\s*\|\s*last$`);
const FIELD = new RegExp(String.raw`^${PATH}$`);

function evaluate(expression: string, valueJson: unknown): unknown {
  let match = CONDITIONAL.exec(expression);
  if (match) return lookup(valueJson, match[2]!) === match[3] ? match[1] : match[4];
  match = SPLIT_LAST.exec(expression);
  if (match) {
    const value = lookup(valueJson, match[1]!);
    if (typeof value !== 'string') throw new Error(`${match[1]} is ${JSON.stringify(value)}, not a string: .split fails in Jinja`);
    return value.split(match[2]!).at(-1);
  }
  match = FIELD.exec(expression);
  if (match) return lookup(valueJson, match[1]!);
  throw new Error(`template expression not understood by the test evaluator: ${expression}`);
}

function lookup(value: unknown, path: string): unknown {
  let node = value;
  for (const key of path.slice(1).split('.')) {
    if (node === null || typeof node !== 'object' || !(key in node)) throw new Error(`value_json${path} is undefined in ${JSON.stringify(value)}`);
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

/**
 * Renders a template with Jinja2's sandbox, which Home Assistant's templates build on
 * (value_json bound to the parsed payload), for templates renderTemplate() does not
 * understand (filters, lists, tojson). Debian's python3-jinja2 (scripts/setup.sh), run by
 * the system python: the `python3` on PATH may be another one without it.
 */
export function renderJinja2(template: string, payload: string): string {
  const script = [
    'import json, sys',
    'from jinja2.sandbox import ImmutableSandboxedEnvironment',
    'template, payload = json.load(sys.stdin)',
    'sys.stdout.write(ImmutableSandboxedEnvironment().from_string(template).render(value_json=json.loads(payload)))',
  ].join('\n');
  const result = spawnSync(SYSTEM_PYTHON, ['-c', script], { input: JSON.stringify([template, payload]), encoding: 'utf8' });
  if (result.error || result.status !== 0) {
    throw new Error(`jinja2 could not render ${template}: ${result.error?.message ?? result.stderr} (install python3-jinja2: scripts/setup.sh)`);
  }
  return result.stdout;
}
