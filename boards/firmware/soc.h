/* The tile's console, cycle counter, interrupt latch and wait-for-interrupt. */
#ifndef SOC_H
#define SOC_H

#include <stdint.h>
#include "soc_regs.h"

#define MMIO32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

static inline uint32_t cycles(void) { return MMIO32(SYS_BASE + SYS_CYCLE); }

/* Interrupts on (mstatus.MIE, mie.MEIE) for the sources in `mask` (IRQ_* bits). */
void irq_enable(uint32_t mask);
/* Interrupts taken so far (incremented by trap_handler). */
extern volatile uint32_t irq_count;
/* Sleep until an interrupt has been taken since the caller read `seen` from
 * irq_count (returns at once if one was). The pattern: seen = irq_count; test
 * the conditions the handlers change; wait_irq(seen). No wake-up is lost. */
void wait_irq(uint32_t seen);
/* Events without traps, for a program whose main loop only waits: the sources in
 * `mask` (IRQ_* bits) are latched in PENDING and end a SLEEP; as long as the
 * program never calls irq_enable (mstatus.MIE stays off), the CPU takes no trap. */
void events_enable(uint32_t mask);
/* Sleep until a source is pending (at once if one is), clear what is pending and
 * return it. Whatever the caller then reads is newer than the events returned; an
 * event after the clear ends the next events_wait at once. No wake-up is lost. */
static inline uint32_t events_wait(void)
{
    MMIO32(SYS_BASE + SYS_SLEEP) = 1; /* completes once PENDING & ENABLE != 0 */
    uint32_t pending = MMIO32(SYS_BASE + SYS_PENDING);
    MMIO32(SYS_BASE + SYS_PENDING) = pending;
    return pending;
}
/* Arm the alarm for cycle `when` (PENDING bit IRQ_ALARM then wakes the CPU). */
static inline void alarm_at(uint32_t when) { MMIO32(SYS_BASE + SYS_ALARM) = when; }

void putc(char c);
void puts(const char *s);          /* no newline added */
void put_dec(uint32_t value);
void put_hex8(uint32_t byte);      /* two hex digits */
int getc(void);                    /* -1 when nothing was received */

/* Called from the trap entry with mcause; dispatches the interrupt sources. */
void trap_handler(uint32_t mcause);
/* Set by trap_handler when the alarm fires. */
extern volatile uint32_t alarm_fired;

#endif
