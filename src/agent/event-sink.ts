import type { AnomalyEventPayload, CameraStatusPayload, InspectionReplyPayload, ScorePayload } from '../publish/payloads.js';
import type { FaultMessage } from '../scoring/faults.js';

/**
 * Where a camera's outputs go. The camera pipeline knows only this interface; the
 * agent fans it out to MQTT, metrics, the operator page and the event lines on
 * stdout, and `linewatch replay` collects the same messages instead.
 */
export interface EventSink {
  /** One step of an event's lifecycle (start, update, end). */
  event(payload: AnomalyEventPayload): void;
  cameraStatus(camera: string, status: CameraStatusPayload): void;
  /** Every scored frame; the MQTT sink publishes only those of cameras with scorePublish. */
  score(camera: string, payload: ScorePayload): void;
  /** The one reply to an accepted inspect command (optional: `linewatch replay` takes no commands). */
  inspection?(payload: InspectionReplyPayload): void;
  /** A camera fault's start or end (the picture is blurred, dark, covered, frozen, moved...). */
  fault?(message: FaultMessage): void;
}

/** Every message to each sink in turn; a sink that throws does not keep the message from the others. */
export function fanOut(sinks: readonly Partial<EventSink>[], onError: (error: unknown) => void): EventSink {
  const each = (call: (sink: Partial<EventSink>) => void) => {
    for (const sink of sinks) {
      try {
        call(sink);
      } catch (error) {
        onError(error);
      }
    }
  };
  return {
    event: (payload) => each((sink) => sink.event?.(payload)),
    cameraStatus: (camera, status) => each((sink) => sink.cameraStatus?.(camera, status)),
    score: (camera, payload) => each((sink) => sink.score?.(camera, payload)),
    inspection: (payload) => each((sink) => sink.inspection?.(payload)),
    fault: (message) => each((sink) => sink.fault?.(message)),
  };
}
