/* The tile's runtime: console output, interrupts, waiting. No libc. */
#include "soc.h"
#include "ivshmem.h"

volatile uint32_t alarm_fired;
volatile uint32_t irq_count;

void events_enable(uint32_t mask)
{
    MMIO32(SYS_BASE + SYS_PENDING) = mask; /* forget anything stale */
    MMIO32(SYS_BASE + SYS_ENABLE) = mask;
}

void irq_enable(uint32_t mask)
{
    events_enable(mask);
    __asm__ volatile("csrs mie, %0" ::"r"(1u << 11));    /* MEIE */
    __asm__ volatile("csrs mstatus, %0" ::"r"(1u << 3)); /* MIE */
}

void wait_irq(uint32_t seen)
{
    /* With MIE off, an interrupt after the test still ends SLEEP (SLEEP waits for
     * PENDING & ENABLE, not for the trap); it is taken as soon as MIE is back on. */
    __asm__ volatile("csrc mstatus, %0" ::"r"(1u << 3));
    if (irq_count == seen)
        MMIO32(SYS_BASE + SYS_SLEEP) = 1;
    __asm__ volatile("csrs mstatus, %0" ::"r"(1u << 3));
}

void trap_handler(uint32_t mcause)
{
    (void)mcause; /* the external interrupt line is the only trap source */
    uint32_t pending = MMIO32(SYS_BASE + SYS_PENDING) & MMIO32(SYS_BASE + SYS_ENABLE);
    MMIO32(SYS_BASE + SYS_PENDING) = pending; /* clear first: a new event sets it again */
    irq_count++;
    if (pending & (1u << IRQ_ALARM))
        alarm_fired = 1;
    if (pending & (1u << IRQ_IVSHMEM))
        ivshmem_interrupt();
}

void putc(char c) { MMIO32(UART_BASE + UART_TX) = (uint8_t)c; }

void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

void put_dec(uint32_t value)
{
    /* no divide instruction: subtract powers of ten */
    static const uint32_t powers[] = {1000000000u, 100000000u, 10000000u, 1000000u,
                                      100000u,     10000u,     1000u,     100u, 10u, 1u};
    int started = 0;
    for (unsigned i = 0; i < sizeof powers / sizeof powers[0]; i++) {
        char digit = '0';
        while (value >= powers[i]) {
            value -= powers[i];
            digit++;
        }
        if (digit != '0' || started || powers[i] == 1) {
            putc(digit);
            started = 1;
        }
    }
}

void put_hex8(uint32_t byte)
{
    static const char hex[] = "0123456789abcdef";
    putc(hex[(byte >> 4) & 0xF]);
    putc(hex[byte & 0xF]);
}

int getc(void)
{
    uint32_t rx = MMIO32(UART_BASE + UART_RX);
    return (rx & 0x100) ? (int)(rx & 0xFF) : -1;
}
