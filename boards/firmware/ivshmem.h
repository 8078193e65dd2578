/* A small ivshmem-flat driver: identity, doorbells, events, shared memory.
 *
 * Register offsets and doorbell fields come from the generated soc_regs.h, which
 * is derived from the one register map of the device. */
#ifndef IVSHMEM_H
#define IVSHMEM_H

#include <stdint.h>
#include "soc_regs.h"

#define IVSHMEM_REGS ((volatile uint32_t *)(uintptr_t)IVSHMEM_BASE)
#define IVSHMEM_SHM ((volatile uint8_t *)(uintptr_t)(IVSHMEM_BASE + IVSHMEM_SHM_SIZE))

/* Events received (interrupts taken), incremented by ivshmem_interrupt(). */
extern volatile uint32_t ivshmem_events;

/* Set up the device and unmask its interrupt; `handler` (may be 0) runs on every
 * interrupt, in interrupt context. Returns the own peer ID (IVPOSITION). */
uint32_t ivshmem_init(void (*handler)(void));
static inline uint32_t ivshmem_id(void)
{
    return IVSHMEM_REGS[FLAT_IVPOSITION / 4];
}
/* Ring `peer` on `vector` (an unknown peer or vector is dropped by the device). */
static inline void ivshmem_ring(uint32_t peer, uint32_t vector)
{
    IVSHMEM_REGS[FLAT_DOORBELL / 4] = (peer << DOORBELL_PEER_LSB) | (vector << DOORBELL_VECTOR_LSB);
}
/* Shared memory as 32-bit words at byte offset `offset` (word-aligned). */
static inline uint32_t shm_read32(uint32_t offset)
{
    return *(volatile uint32_t *)(IVSHMEM_SHM + offset);
}
static inline void shm_write32(uint32_t offset, uint32_t value)
{
    *(volatile uint32_t *)(IVSHMEM_SHM + offset) = value;
}
static inline uint8_t shm_read8(uint32_t offset) { return IVSHMEM_SHM[offset]; }
static inline void shm_write8(uint32_t offset, uint8_t value) { IVSHMEM_SHM[offset] = value; }

/* The interrupt handler (called by the trap handler). */
void ivshmem_interrupt(void);

#endif
