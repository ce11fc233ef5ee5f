"""What PyTorch's CUDA caching allocator reserves for a sequence of tensor allocations.

nvidia-smi (and `torch.cuda.max_memory_reserved`) show the allocator's segments, not the live
tensors: a freed block stays cached in its segment, and is reused only by a request it can hold,
so a step that allocates a 1.6 GB tensor after freeing two 0.8 GB ones reserves all three. The
rules below are those of c10/cuda/CUDACachingAllocator.cpp with its default settings (no
max_split_size, no expandable segments, one stream), replayed over the allocation and free
events chatglm.memory records on fake tensors; nothing here touches a GPU.

- sizes round up to 512 bytes; requests up to 1 MiB come from 2 MiB segments (the small pool);
  larger ones from 20 MiB segments below 10 MiB, else from a segment of their size rounded up
  to 2 MiB (the large pool);
- a request takes the smallest cached free block of its pool that holds it, split when the rest
  is at least 512 bytes (small pool) or more than 1 MiB (large pool); otherwise a new segment;
- a freed block merges with free neighbours in its segment; segments are never returned.
"""
from __future__ import annotations

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
MIN_LARGE_ALLOC = 10 << 20
LARGE_BUFFER = 20 << 20
ROUND_LARGE = 2 << 20


class _Block:
    __slots__ = ("size", "free", "prev", "next", "small")

    def __init__(self, size: int, small: bool):
        self.size, self.free, self.prev, self.next, self.small = size, False, None, None, small


def round_size(n: int) -> int:
    return MIN_BLOCK if n < MIN_BLOCK else (n + MIN_BLOCK - 1) // MIN_BLOCK * MIN_BLOCK


def segment_size(n: int) -> int:
    if n <= SMALL_SIZE:
        return SMALL_BUFFER
    if n < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return (n + ROUND_LARGE - 1) // ROUND_LARGE * ROUND_LARGE


class CachingAllocator:
    def __init__(self):
        self.free_blocks: dict[bool, list[_Block]] = {True: [], False: []}  # by pool (small?)
        self.live: dict[object, _Block] = {}
        self.reserved = self.allocated = self.peak_allocated = 0

    def malloc(self, key, nbytes: int) -> None:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self.free_blocks[small]
        fits = [b for b in pool if b.size >= size]
        if fits:
            block = min(fits, key=lambda b: b.size)
            pool.remove(block)
        else:
            block = _Block(segment_size(size), small)
            self.reserved += block.size
        rest = block.size - size
        if (small and rest >= MIN_BLOCK) or (not small and rest > SMALL_SIZE):
            tail = _Block(rest, small)
            tail.free, tail.prev, tail.next = True, block, block.next
            if block.next is not None:
                block.next.prev = tail
            block.next, block.size = tail, size
            pool.append(tail)
        block.free = False
        self.live[key] = block
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)

    def free(self, key) -> None:
        block = self.live.pop(key, None)
        if block is None:
            return
        self.allocated -= block.size
        pool = self.free_blocks[block.small]
        for neighbour in (block.prev, block.next):
            if neighbour is not None and neighbour.free:
                pool.remove(neighbour)
                if neighbour is block.prev:  # absorb into the earlier block
                    neighbour.size += block.size
                    neighbour.next = block.next
                    if block.next is not None:
                        block.next.prev = neighbour
                    block = neighbour
                else:
                    block.size += neighbour.size
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
        block.free = True
        pool.append(block)


def replay(events: list[tuple[str, object, int]]) -> CachingAllocator:
    """events: ("alloc", key, bytes) / ("free", key, 0), in order; the allocator after them."""
    allocator = CachingAllocator()
    for kind, key, nbytes in events:
        if kind == "alloc":
            allocator.malloc(key, nbytes)
        else:
            allocator.free(key)
    return allocator
