export * from './backoff.js';
export * from './camera.js';
export * from './ffmpeg-args.js';
export * from './ffmpeg-log.js';
export * from './frame-queue.js';
export * from './frame-reader.js';
