/**
 * The driver-side pieces of virtio-blk requests (virtio 1.x §5.2.6), for tests
 * that build request chains by hand.
 */
import { virtio_blk_discard_write_zeroes, virtio_blk_outhdr } from "../../../linux/abi.generated.js";
import { dataView, setU32, setU64 } from "../../../memory/le.js";

/** A request header (struct virtio_blk_outhdr): request `type` (VIRTIO_BLK_T_*) at `sector`. */
export function blkHeader(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(virtio_blk_outhdr.SIZE);
  setU32(dataView(h), virtio_blk_outhdr.type, type);
  setU64(dataView(h), virtio_blk_outhdr.sector, BigInt(sector));
  return h;
}

/** One DISCARD or WRITE_ZEROES segment (struct virtio_blk_discard_write_zeroes): `sectors` from `sector`, no flags. */
export function blkSegment(sector: number, sectors: number): Uint8Array {
  const s = new Uint8Array(virtio_blk_discard_write_zeroes.SIZE);
  setU64(dataView(s), virtio_blk_discard_write_zeroes.sector, BigInt(sector));
  setU32(dataView(s), virtio_blk_discard_write_zeroes.num_sectors, sectors);
  return s;
}
