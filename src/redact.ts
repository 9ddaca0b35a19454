/**
 * The one credential scrubber. Camera and broker URLs routinely carry passwords
 * (`rtsp://admin:pw@cam`, `?pwd=...`, `&token=...`), and they reach people through
 * many doors: log lines, ffmpeg's stderr, MQTT status reasons, the health page,
 * `validate-config` and config errors. Every door goes through `scrubSecrets`, so a
 * new secret pattern is added in one place and holds everywhere.
 */

export const SECRET_MASK = '***';

/**
 * Userinfo of any URL scheme: everything between `scheme://` and the last `@` of
 * the authority (a password may itself hold `@`). The whole userinfo goes, not just
 * the password: a lone `token@host` is as secret as `user:pw@host`. One or three
 * slashes too, since a mistyped `rtsp:/user:pw@cam` still shows up in error messages.
 * An apostrophe is a legal userinfo character (ffmpeg quotes such a URL as 'rtsp://u:it's@cam'),
 * so it does not end the userinfo; a double quote or angle bracket does.
 */
const USERINFO = /([a-z][a-z0-9+.-]*:\/{1,3})[^\s/?#"<>]*@/gi;

/**
 * `name=value` after `?`, `&`, `;`, whitespace or the start: query strings, and the same shape in free text.
 * A value may hold `:`, but not a final one before a space: that is ffmpeg's "url: message" separator.
 */
const PARAMETER = /(^|[?&;\s])([A-Za-z0-9_.[\]-]+)=((?:[^&#;\s'"<>:]|:(?!\s|$))*)/g;

/** HTTP credentials as ffmpeg or a proxy may echo them. */
const AUTHORIZATION_HEADER = /\b((?:proxy-)?authorization:\s*(?:basic|bearer)\s+)[^\s'"]+/gi;

/** Words that mark a parameter as secret wherever they stand in its name (`pwd`, `access_token`, `x-api-key`, `authKey`). */
const SECRET_WORDS = new Set([
  'pass',
  'passwd',
  'password',
  'passphrase',
  'pwd',
  'pw',
  'token',
  'secret',
  'auth',
  'authorization',
  'key',
  'apikey',
  'sig',
  'signature',
  'credential',
  'credentials',
]);

/** Endings of run-together lowercase names (`accesstoken`, `clientsecret`). */
const SECRET_ENDINGS = ['password', 'passwd', 'passphrase', 'token', 'secret', 'apikey', 'signature', 'credential', 'credentials'];

/** Whether a query parameter (or similar key) name looks like it holds a secret. */
export function isSecretName(name: string): boolean {
  const words = name.split(/[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])/).map((word) => word.toLowerCase());
  if (words.some((word) => SECRET_WORDS.has(word))) return true;
  const compact = words.join('');
  return SECRET_ENDINGS.some((ending) => compact.endsWith(ending));
}

/**
 * Text with every credential replaced by `***`: URL userinfo (`rtsp://***@cam`),
 * secret-looking parameters (`?user=admin&pwd=***`) and Authorization headers.
 * Works on a single URL and on free text alike (ffmpeg lines, error messages), and
 * is idempotent, so text scrubbed twice reads the same.
 */
export function scrubSecrets(text: string): string {
  return text
    .replace(USERINFO, `$1${SECRET_MASK}@`)
    .replace(PARAMETER, (match, lead: string, name: string, value: string) =>
      value !== '' && isSecretName(name) ? `${lead}${name}=${SECRET_MASK}` : match,
    )
    .replace(AUTHORIZATION_HEADER, `$1${SECRET_MASK}`);
}
