import path from 'node:path';

/** A problem found while reading the config, at a dotted path (`cameras.1.url`). */
export interface ConfigIssue {
  path: string;
  message: string;
}

export type Environment = Readonly<Record<string, string | undefined>>;

export type ConfigPath = readonly (string | number)[];

export function formatPath(at: ConfigPath): string {
  return at.length === 0 ? '(root)' : at.join('.');
}

export interface Substitution {
  value: unknown;
  issues: ConfigIssue[];
  /** Paths of strings that were exactly one `${...}` reference: they may be retyped to the number or boolean the schema expects. */
  wholeReferences: ConfigPath[];
}

const CREDENTIALS_PREFIX = '$CREDENTIALS_DIRECTORY/';

/**
 * Replaces `${VAR}` and `${VAR:-default}` in every string value (keys are left
 * alone) and expands a leading `$CREDENTIALS_DIRECTORY/`. `$${` stands for a
 * literal `${`. A variable that is unset (or empty, with `:-`) takes its
 * default; unset without a default is an issue naming the variable and the path.
 */
export function substituteEnvironment(input: unknown, env: Environment): Substitution {
  const issues: ConfigIssue[] = [];
  const wholeReferences: ConfigPath[] = [];

  const visit = (node: unknown, at: ConfigPath): unknown => {
    if (typeof node === 'string') {
      const result = substituteString(node, env);
      for (const message of result.problems) issues.push({ path: formatPath(at), message });
      if (result.wholeReference) wholeReferences.push(at);
      return result.text;
    }
    if (Array.isArray(node)) return node.map((item, index) => visit(item, [...at, index]));
    if (isPlainObject(node)) {
      return Object.fromEntries(Object.entries(node).map(([key, value]) => [key, visit(value, [...at, key])]));
    }
    return node;
  };

  return { value: visit(input, []), issues, wholeReferences };
}

const REFERENCE = /\$\$\{|\$\{([^}]*)\}|\$\{/g;
const VARIABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function substituteString(
  text: string,
  env: Environment,
): { text: string; problems: string[]; wholeReference: boolean } {
  const problems: string[] = [];
  let references = 0;
  let replaced = text.replace(REFERENCE, (match: string, body: string | undefined) => {
    if (match === '$${') return '${';
    if (body === undefined) {
      problems.push('unterminated ${ (write $${ for a literal ${)');
      return match;
    }
    references += 1;
    const separator = body.indexOf(':-');
    const name = separator === -1 ? body : body.slice(0, separator);
    if (!VARIABLE_NAME.test(name)) {
      problems.push(`\${${body}} is not a variable reference: use \${NAME} or \${NAME:-default}`);
      return match;
    }
    const value = env[name];
    if (separator !== -1) return value === undefined || value === '' ? body.slice(separator + 2) : value;
    if (value === undefined) {
      problems.push(`environment variable ${name} is not set (set it, or give a default: \${${name}:-value})`);
      return match;
    }
    return value;
  });
  if (replaced.startsWith(CREDENTIALS_PREFIX)) {
    const directory = env.CREDENTIALS_DIRECTORY;
    if (directory === undefined || directory === '') {
      problems.push(credentialsDirectoryMissing());
    } else {
      replaced = path.join(directory, replaced.slice(CREDENTIALS_PREFIX.length));
    }
  }
  const wholeReference = references === 1 && /^\$\{[^}]*\}$/.test(text);
  return { text: replaced, problems, wholeReference };
}

export function credentialsDirectoryMissing(): string {
  return '$CREDENTIALS_DIRECTORY is not set: systemd sets it for services with LoadCredential= or SetCredential=; outside systemd, use a plain file path';
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
