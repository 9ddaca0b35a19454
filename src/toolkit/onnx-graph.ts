/**
 * Readers for ONNX graphs as onnx-proto decodes them, shared by the offline graph rewrites
 * (quantize.ts, depth-to-space.ts).
 */
import onnxProto from 'onnx-proto';
import { ModelError } from '../errors.js';
import { MODEL_IO } from '../model/manifest.js';

type INode = onnxProto.onnx.INodeProto;

export function intAttribute(node: INode, name: string, fallback: number): number {
  const attribute = node.attribute?.find((a) => a.name === name);
  return attribute?.i === undefined || attribute.i === null ? fallback : Number(attribute.i);
}

export function floatAttribute(node: INode, name: string, fallback: number): number {
  const attribute = node.attribute?.find((a) => a.name === name);
  return attribute?.f === undefined || attribute.f === null ? fallback : attribute.f;
}

export function stringAttribute(node: INode, name: string, fallback: string): string {
  const attribute = node.attribute?.find((a) => a.name === name);
  return attribute?.s ? new TextDecoder().decode(attribute.s) : fallback;
}

export function intsAttribute(node: INode, name: string): number[] | undefined {
  return node.attribute?.find((a) => a.name === name)?.ints?.map(Number);
}

/** The nodes that read each tensor, in graph order. */
export function consumersOf(nodes: readonly INode[]): Map<string, INode[]> {
  const consumers = new Map<string, INode[]>();
  for (const node of nodes) for (const input of node.input ?? []) consumers.set(input, [...(consumers.get(input) ?? []), node]);
  return consumers;
}

/** The node that writes each tensor. */
export function producersOf(nodes: readonly INode[]): Map<string, INode> {
  const producers = new Map<string, INode>();
  for (const node of nodes) for (const output of node.output ?? []) producers.set(output, node);
  return producers;
}

/** Values per image of the model's input [batch, C, H, W]; `action` names what needs it, for the error. */
export function imageSize(model: onnxProto.onnx.ModelProto, action: string): number {
  const input = model.graph!.input?.find((i) => i.name === MODEL_IO.input);
  const dims = input?.type?.tensorType?.shape?.dim ?? [];
  const fixed = dims.slice(1).map((d) => Number(d.dimValue ?? 0));
  if (!input || dims.length !== 4 || fixed.some((d) => !(d > 0))) {
    throw new ModelError(`cannot ${action}: the model needs a float input "${MODEL_IO.input}" [batch, C, H, W] with fixed C, H, W`);
  }
  return fixed.reduce((a, b) => a * b, 1);
}
