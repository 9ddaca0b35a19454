import { timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';

/**
 * The REST API under /api: a table of routes, each with its OpenAPI description
 * next to its handler, so /api/openapi.json is generated from what is served and
 * cannot drift from it. Errors are JSON `{ error, message }` with a status code.
 * Written on node:http like the rest of the health server: a dozen routes do not
 * need a framework, and the agent stays free of one on a small box.
 */

export interface ApiRequest {
  method: string;
  /** Path parameters, percent-decoded (`{camera}` in the route's path). */
  params: Record<string, string>;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  /** The request body (POST), at most the route's `maxBodyBytes`. */
  body: Uint8Array;
}

export type ApiResponse =
  | { status: number; json: unknown; headers?: Record<string, string> }
  | { status: number; contentType: string; body: Uint8Array | string; headers?: Record<string, string> }
  /** The route writes the response itself (a stream: MJPEG). */
  | { stream: (response: ServerResponse, request: IncomingMessage) => void };

/** Thrown by a handler: becomes `{ error: code, message }` with `status`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** An OpenAPI 3 parameter (query or path), as it appears in the document. */
export interface ApiParameter {
  name: string;
  in: 'query' | 'path';
  required?: boolean;
  description?: string;
  schema: Record<string, unknown>;
}

export interface ApiRoute {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** OpenAPI-style path: `/api/cameras/{camera}/frame.jpg`. Path parameters are declared from it. */
  path: string;
  summary: string;
  tags?: string[];
  /** Query parameters (path parameters are added from `path`). */
  query?: ApiParameter[];
  requestBody?: { contentType: string; schema: Record<string, unknown>; maxBytes: number; required?: boolean };
  /**
   * The `error` of the router's own 400 (path encoding) and 413 (body size) answers on this
   * route, for a route whose replies have their own codes (inspect: `invalid-command`).
   */
  errorCode?: string;
  /** Status code -> what it means and, for JSON, the schema of the body. */
  responses: Record<string, { description: string; contentType?: string; schema?: Record<string, unknown> }>;
  handle(request: ApiRequest): Promise<ApiResponse> | ApiResponse;
}

export interface ApiRouterOptions {
  /** When set, every /api route except the OpenAPI document needs `Authorization: Bearer <token>`. */
  token?: string;
  title?: string;
  version: string;
}

interface CompiledRoute {
  route: ApiRoute;
  pattern: RegExp;
  names: string[];
}

const DEFAULT_MAX_BODY_BYTES = 16 * 1024;
export const OPENAPI_PATH = '/api/openapi.json';

export class ApiRouter {
  private readonly routes: CompiledRoute[] = [];
  private readonly token: Buffer | undefined;

  constructor(private readonly options: ApiRouterOptions) {
    this.token = options.token ? Buffer.from(options.token) : undefined;
  }

  get requiresToken(): boolean {
    return this.token !== undefined;
  }

  add(route: ApiRoute): void {
    if (!route.path.startsWith('/api/')) throw new Error(`API route ${route.path} must start with /api/`);
    const names: string[] = [];
    const pattern = new RegExp(
      `^${route.path
        .split('/')
        .map((segment) => {
          const parameter = /^\{(\w+)\}(.*)$/.exec(segment);
          if (!parameter) return escapeRegExp(segment);
          names.push(parameter[1]!);
          return `([^/]+)${escapeRegExp(parameter[2]!)}`;
        })
        .join('/')}$`,
    );
    if (this.routes.some((known) => known.route.path === route.path && known.route.method === route.method)) {
      throw new Error(`API route ${route.method} ${route.path} is declared twice`);
    }
    this.routes.push({ route, pattern, names });
  }

  /** Answers a request under /api; returns false for any other path (the caller serves it). */
  async handle(request: IncomingMessage, response: ServerResponse): Promise<boolean> {
    const url = new URL(request.url ?? '/', 'http://localhost');
    if (url.pathname !== '/api' && !url.pathname.startsWith('/api/')) return false;
    try {
      await this.dispatch(request, response, url);
    } catch (error) {
      if (response.headersSent) {
        response.destroy();
        return true;
      }
      if (error instanceof ApiError) {
        sendJson(response, error.status, { error: error.code, message: error.message }, error.headers);
      } else {
        sendJson(response, 500, { error: 'internal', message: (error as Error).message });
      }
    }
    return true;
  }

  /** The OpenAPI 3.1 document of every route added. */
  openApiDocument(): Record<string, unknown> {
    const paths: Record<string, Record<string, unknown>> = {};
    const errorSchema = { $ref: '#/components/schemas/Error' };
    for (const { route, names } of this.routes) {
      const operation: Record<string, unknown> = {
        summary: route.summary,
        operationId: operationId(route),
        ...(route.tags ? { tags: route.tags } : {}),
        parameters: [
          ...names.map((name) => ({ name, in: 'path', required: true, schema: { type: 'string' } })),
          ...(route.query ?? []),
        ],
        responses: Object.fromEntries(
          Object.entries(route.responses).map(([status, described]) => [
            status,
            {
              description: described.description,
              ...(described.contentType || described.schema
                ? { content: { [described.contentType ?? 'application/json']: described.schema ? { schema: described.schema } : {} } }
                : {}),
            },
          ]),
        ),
      };
      if (route.requestBody) {
        operation.requestBody = {
          required: route.requestBody.required ?? true,
          content: { [route.requestBody.contentType]: { schema: route.requestBody.schema } },
        };
      }
      if (this.token && route.path !== OPENAPI_PATH) {
        operation.security = [{ bearer: [] }];
        (operation.responses as Record<string, unknown>)['401'] = {
          description: 'missing or wrong bearer token',
          content: { 'application/json': { schema: errorSchema } },
        };
      }
      (paths[route.path] ??= {})[route.method.toLowerCase()] = operation;
    }
    return {
      openapi: '3.1.0',
      info: { title: this.options.title ?? 'linewatch agent API', version: this.options.version },
      paths,
      components: {
        schemas: {
          Error: {
            type: 'object',
            required: ['error', 'message'],
            properties: { error: { type: 'string' }, message: { type: 'string' } },
          },
        },
        ...(this.token ? { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } } : {}),
      },
    };
  }

  private async dispatch(request: IncomingMessage, response: ServerResponse, url: URL): Promise<void> {
    const matching = this.routes
      .map((compiled) => ({ compiled, match: compiled.pattern.exec(url.pathname) }))
      .filter((candidate): candidate is { compiled: CompiledRoute; match: RegExpExecArray } => candidate.match !== null);
    if (matching.length === 0) throw new ApiError(404, 'not-found', `no API route ${url.pathname}; see ${OPENAPI_PATH}`);
    const method = request.method === 'HEAD' ? 'GET' : (request.method ?? 'GET');
    const found = matching.find(({ compiled }) => compiled.route.method === method);
    if (!found) {
      const allowed = [...new Set(matching.map(({ compiled }) => compiled.route.method))].join(', ');
      throw new ApiError(405, 'method-not-allowed', `${request.method} is not allowed on ${url.pathname}; use ${allowed}`, { Allow: allowed });
    }
    const { route, names } = found.compiled;
    if (route.path !== OPENAPI_PATH) this.authorise(request);
    const params: Record<string, string> = {};
    names.forEach((name, i) => {
      try {
        params[name] = decodeURIComponent(found.match[i + 1]!);
      } catch {
        throw new ApiError(400, route.errorCode ?? 'bad-request', `the ${name} in the path is not valid percent-encoding`);
      }
    });
    const body = route.method === 'GET' ? new Uint8Array(0) : await readBody(request, route.requestBody?.maxBytes ?? DEFAULT_MAX_BODY_BYTES, route.errorCode);
    const result = await route.handle({ method, params, query: url.searchParams, headers: request.headers, body });
    if ('stream' in result) return result.stream(response, request);
    if ('json' in result) return sendJson(response, result.status, result.json, result.headers, request.method === 'HEAD');
    response.writeHead(result.status, {
      'Content-Type': result.contentType,
      'Content-Length': Buffer.byteLength(result.body),
      'Cache-Control': 'no-store',
      ...SECURITY_HEADERS,
      ...result.headers,
    });
    response.end(request.method === 'HEAD' ? undefined : result.body);
  }

  /** Answers 401 (and returns false) unless the request carries the token; true when no token is configured. */
  guard(request: IncomingMessage, response: ServerResponse): boolean {
    try {
      this.authorise(request);
      return true;
    } catch (error) {
      const denied = error as ApiError;
      sendJson(response, denied.status, { error: denied.code, message: denied.message }, denied.headers);
      return false;
    }
  }

  private authorise(request: IncomingMessage): void {
    if (!this.token) return;
    const header = request.headers.authorization ?? '';
    const presented = /^Bearer\s+(.+)$/i.exec(header)?.[1]?.trim();
    const ok = presented !== undefined && Buffer.byteLength(presented) === this.token.length && timingSafeEqual(Buffer.from(presented), this.token);
    if (!ok) {
      throw new ApiError(401, 'unauthorized', presented === undefined ? 'this API needs Authorization: Bearer <health.token>' : 'wrong bearer token', {
        'WWW-Authenticate': 'Bearer realm="linewatch"',
      });
    }
  }
}

const SECURITY_HEADERS = { 'X-Content-Type-Options': 'nosniff' };

export function sendJson(response: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}, headOnly = false): void {
  const body = `${JSON.stringify(value)}\n`;
  response.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    ...SECURITY_HEADERS,
    ...headers,
  });
  response.end(headOnly ? undefined : body);
}

/** The body up to `limit` bytes; a larger one is a 413 (and is not buffered). */
async function readBody(request: IncomingMessage, limit: number, code = 'too-large'): Promise<Uint8Array> {
  if (Number(request.headers['content-length']) > limit) {
    request.resume();
    throw new ApiError(413, code, `request body over ${limit} bytes`, { Connection: 'close' });
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      request.resume();
      throw new ApiError(413, code, `request body over ${limit} bytes`, { Connection: 'close' });
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function operationId(route: ApiRoute): string {
  const words = route.path
    .replace(/^\/api\//, '')
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean);
  return [route.method.toLowerCase(), ...words.map((word) => word[0]!.toUpperCase() + word.slice(1))].join('');
}

/** Whether a host to bind is loopback-only (a token is optional there, required anywhere else). */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  return bare === 'localhost' || bare === '::1' || /^127(\.\d{1,3}){3}$/.test(bare);
}
