// A valid-qualified delay line: DEPTH register stages (DEPTH = 0 passes straight through).
// The valid bit moves every cycle; a data stage loads only when the stage before it holds valid
// data, so data registers do not toggle on bubbles. Part of the reference array, docs/rtl.md.
module velcro_delay #(
    parameter WIDTH = 8,
    parameter DEPTH = 1
) (
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire             clk,    // unused when DEPTH = 0
    input  wire             rst_n,
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire             v_in,
    input  wire             f_in,
    input  wire [WIDTH-1:0] d_in,
    output wire             v_out,
    output wire             f_out,
    output wire [WIDTH-1:0] d_out
);
    generate
        if (DEPTH == 0) begin : g_wire
            assign v_out = v_in;
            assign f_out = f_in;
            assign d_out = d_in;
        end else begin : g_regs
            reg [DEPTH-1:0] v_q;
            reg [DEPTH-1:0] f_q;
            reg [WIDTH-1:0] d_q [0:DEPTH-1];
            integer s;
            always @(posedge clk) begin
                if (!rst_n) begin
                    v_q <= {DEPTH{1'b0}};
                    f_q <= {DEPTH{1'b0}};
                end else begin
                    v_q[0] <= v_in;
                    f_q[0] <= f_in & v_in;
                    for (s = 1; s < DEPTH; s = s + 1) begin
                        v_q[s] <= v_q[s-1];
                        f_q[s] <= f_q[s-1];
                    end
                end
            end
            always @(posedge clk) begin
                if (v_in) d_q[0] <= d_in;
                for (s = 1; s < DEPTH; s = s + 1)
                    if (v_q[s-1]) d_q[s] <= d_q[s-1];
            end
            assign v_out = v_q[DEPTH-1];
            assign f_out = f_q[DEPTH-1];
            assign d_out = d_q[DEPTH-1];
        end
    endgenerate
endmodule
