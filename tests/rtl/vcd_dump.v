// A second root module for Icarus: dumps the whole array to velcro_array.vcd (toggle counts).
module velcro_vcd_dump;
    initial begin
        $dumpfile("velcro_array.vcd");
        $dumpvars(0, velcro_os_array);
    end
endmodule
