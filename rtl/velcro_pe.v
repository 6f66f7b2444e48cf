// One processing element of the output-stationary array (docs/rtl.md): an int8 MAC with a 32-bit
// accumulator. Operands pass through to the right (activation) and down (weight) every cycle, with
// a valid token and a first-of-fold token travelling beside the activation.
// A masked element (skip = 1) issues no MAC: its operand registers do not load, so the
// multiplier's inputs do not toggle, and its accumulator holds.
// Timing: operands arrive in cycle c, load the operand registers at the end of c, and the
// product is accumulated at the end of c + 1. On `capture` the accumulator is copied to `result`
// (the array drains results from there while the next fold computes); a masked element's
// result register holds as well.
module velcro_pe (
    input  wire               clk,
    input  wire               rst_n,
    input  wire signed [8:0]  a_in,    // activation minus the input zero point, from the left
    input  wire signed [7:0]  w_in,    // weight, from above
    input  wire               v_in,    // a valid operand pair arrives this cycle
    input  wire               f_in,    // ... and it is the first of its fold
    input  wire               skip,    // this PE's output element is masked in the current fold
    output reg  signed [8:0]  a_out,
    output reg  signed [7:0]  w_out,
    output reg                v_out,
    output reg                f_out,
    input  wire               capture, // every PE holds its fold's result: copy it out
    input  wire               hold,    // ... except where that fold masked this element
    output reg                mac,     // a MAC is issued this cycle
    output reg  signed [31:0] result   // the last fold's accumulator, for the drain
);
    reg signed [31:0] acc;
    reg signed [8:0] op_a;
    reg signed [7:0] op_w;
    reg              mac_first;
    wire             issue = v_in & ~skip;
    wire signed [16:0] prod = op_a * op_w;
    wire signed [31:0] prod32 = {{15{prod[16]}}, prod};

    always @(posedge clk) begin
        if (!rst_n) begin
            v_out <= 1'b0;
            f_out <= 1'b0;
            mac <= 1'b0;
            mac_first <= 1'b0;
        end else begin
            v_out <= v_in;
            f_out <= f_in & v_in;
            mac <= issue;
            mac_first <= f_in;
        end
    end

    // Data registers carry no reset: a PE's state is defined by the first MAC of a fold.
    always @(posedge clk) begin
        if (v_in) begin
            a_out <= a_in;
            w_out <= w_in;
        end
        if (issue) begin
            op_a <= a_in;
            op_w <= w_in;
        end
        if (mac) acc <= mac_first ? prod32 : acc + prod32;
        if (capture && !hold) result <= acc;
    end
endmodule
